"""Writers: put the combined dataset into its output format."""
