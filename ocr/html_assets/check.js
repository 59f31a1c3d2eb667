// After load: record on <body> how many page images decoded and how many grounded boxes have a size on
// screen, so a headless browser (tests/test_browser.py) or a person can check the page at a glance.
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.querySelectorAll("img.scan"));
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var rects = Array.prototype.slice.call(document.querySelectorAll("svg.boxes rect"));
  var drawn = rects.filter(function (r) { var b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0; });
  var body = document.body;
  body.dataset.imagesTotal = images.length;
  body.dataset.imagesLoaded = loaded.length;
  body.dataset.boxesTotal = rects.length;
  body.dataset.boxesDrawn = drawn.length;
  var maths = Array.prototype.slice.call(document.querySelectorAll("math"));
  body.dataset.mathTotal = maths.length;
  body.dataset.mathDrawn = maths.filter(function (m) { return m.getBoundingClientRect().width > 0; }).length;
  if (images.length) {
    var r = images[0].getBoundingClientRect();     // where the first page image is, for screenshot checks
    body.dataset.firstScan = [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height].map(Math.round).join(",");
  }
  body.dataset.checked = "1";
  var note = document.getElementById("check");
  if (note) {
    note.textContent = loaded.length + " of " + images.length + " page images shown" +
      (rects.length ? ", " + drawn.length + " of " + rects.length + " boxes drawn" : "");
  }
});
