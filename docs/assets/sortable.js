// Sortable tables (the instruction index, docs/tools/instruction_pages.py): a click on a heading
// with data-sort sorts the rows by that column, again to reverse. "key" columns sort by each
// cell's data-key (exit reasons and sizes zero-padded, opcodes as their hex bytes), "text" ones
// by the text.
(function () {
  function sortBy(table, th, col) {
    const body = table.tBodies[0];
    const down = th.getAttribute("aria-sort") === "ascending";
    const key = (tr) => {
      const td = tr.cells[col];
      return th.dataset.sort === "key" ? (td.dataset.key || "") : td.textContent.trim().toLowerCase();
    };
    const rows = Array.from(body.rows);
    rows.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (down ? -1 : 1));
    for (const h of table.tHead.rows[0].cells) h.removeAttribute("aria-sort");
    th.setAttribute("aria-sort", down ? "descending" : "ascending");
    body.append(...rows);
  }
  for (const table of document.querySelectorAll("table.vx-sortable")) {
    Array.from(table.tHead.rows[0].cells).forEach((th, col) => {
      if (!th.dataset.sort) return;
      th.tabIndex = 0;
      th.addEventListener("click", () => sortBy(table, th, col));
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          sortBy(table, th, col);
        }
      });
    });
  }
})();
