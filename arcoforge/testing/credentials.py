"""Made-up credentials that the loopback servers of tests require; tests then search every
byte arcoforge wrote or printed for them, to show that none leaks."""

TOKEN = "s3cr3t-XYZ"
USER, PASSWORD = "alice", "pa55-w0rd-Q"
