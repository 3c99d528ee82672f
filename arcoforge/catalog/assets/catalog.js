/* arcoforge catalog: search and filters of the index page, copy buttons of dataset pages.
   Plain JavaScript, no framework and no network: the index is embedded in the page. */
"use strict";

(function () {
  function words(text) {
    return text.toLowerCase().split(/\s+/).filter(Boolean);
  }

  function setUpIndex(form, data) {
    var entries = JSON.parse(data.textContent);
    var list = document.getElementById("cards");
    var cards = {};
    Array.prototype.forEach.call(list.children, function (card) {
      cards[card.getAttribute("data-slug")] = card;
    });
    entries.forEach(function (entry) {
      entry.haystack = [entry.title, entry.description, entry.variables.join(" "),
        entry.long_names.join(" "), entry.tags.join(" ")].join("\n").toLowerCase();
    });
    var query = document.getElementById("q");
    var selects = form.querySelectorAll("select[data-filter]");
    var count = document.getElementById("count");
    var nothing = document.getElementById("nothing");

    function matches(entry, terms, chosen) {
      for (var i = 0; i < terms.length; i++) {
        if (entry.haystack.indexOf(terms[i]) < 0) return false;
      }
      for (var name in chosen) {
        var value = chosen[name];
        if (name === "tag" && entry.tags.indexOf(value) < 0) return false;
        if (name === "provider" && entry.providers.indexOf(value) < 0) return false;
        if ((name === "license" || name === "type" || name === "status") && entry[name] !== value) return false;
      }
      return true;
    }

    function apply() {
      var terms = words(query.value);
      var chosen = {};
      selects.forEach(function (select) {
        if (select.value) chosen[select.getAttribute("data-filter")] = select.value;
      });
      var kept = [];
      entries.forEach(function (entry) {
        if (matches(entry, terms, chosen)) kept.push(cards[entry.slug]);
      });
      show(kept);
      count.textContent = kept.length + " of " + entries.length + " datasets";
      nothing.hidden = kept.length > 0;
      remember(terms.length ? query.value : "", chosen);
    }

    function show(kept) {
      /* the list holds only the cards that match, in the index's order: taking cards out
         is far cheaper for the browser than hiding hundreds of them */
      var current = list.children;
      var same = current.length === kept.length && kept.every(function (card, i) {
        return current[i] === card;
      });
      if (!same) list.replaceChildren.apply(list, kept);
    }

    function remember(text, chosen) {
      var params = new URLSearchParams();
      if (text) params.set("q", text);
      Object.keys(chosen).forEach(function (name) { params.set(name, chosen[name]); });
      var hash = params.toString();
      if (hash !== location.hash.slice(1)) {
        history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
      }
    }

    function restore() {
      var params = new URLSearchParams(location.hash.slice(1));
      query.value = params.get("q") || "";
      selects.forEach(function (select) {
        var value = params.get(select.getAttribute("data-filter")) || "";
        var known = Array.prototype.some.call(select.options, function (o) { return o.value === value; });
        select.value = known ? value : "";
      });
    }

    form.addEventListener("input", apply);
    form.addEventListener("change", apply);
    form.addEventListener("submit", function (event) { event.preventDefault(); apply(); });
    form.addEventListener("reset", function () { setTimeout(apply, 0); });
    restore();
    apply();
    document.documentElement.setAttribute("data-ready", "true");
  }

  function copyByCommand(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var done = false;
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    document.body.removeChild(area);
    return done ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copyText(text) {
    /* the Clipboard API where the page is a secure context (https, loopback), else (file://,
       plain http) or where it is refused, the older copy command */
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return copyByCommand(text); });
    }
    return copyByCommand(text);
  }

  function setUpCopyButtons() {
    document.querySelectorAll("button[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var code = document.getElementById(button.getAttribute("data-copy"));
        var status = button.closest("section").querySelector(".copied");
        copyText(code.textContent).then(function () {
          status.textContent = "Copied to the clipboard.";
        }, function () {
          status.textContent = "Could not copy: select the code and copy it by hand.";
        });
      });
    });
  }

  function start() {
    var form = document.getElementById("finder");
    var data = document.getElementById("catalog-index");
    if (form && data) setUpIndex(form, data);
    setUpCopyButtons();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
