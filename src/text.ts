// Text formatting shared by the commands' output: sizes, counts, rates and aligned tables.

/** 1536 -> "1.5 KiB"; binary units, three significant digits. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = bytes;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  const text = u === 0 ? String(Math.round(v)) : Number(v.toPrecision(3)).toString();
  return `${text} ${units[u]}`;
}

/** 45733 -> "45,733". */
export function formatCount(n: number): string {
  return n.toLocaleString("en-US");
}

/** A learning rate or loss weight, short: 3e-05 -> "3e-5", 0.0015 -> "0.0015", 1.5e-6 -> "1.5e-6". */
export function formatRate(v: number): string {
  if (v === 0) return "0";
  const text = Math.abs(v) < 1e-3 || Math.abs(v) >= 1e4 ? v.toExponential() : String(v);
  const [mantissa, exponent] = text.split("e");
  const m = Number(Number(mantissa).toPrecision(4)).toString();
  return exponent === undefined ? m : `${m}e${Number(exponent)}`;
}

/** Pads each column to its widest cell; `indent` spaces before each row; the last column is not padded. */
export function table(rows: string[][], indent = 2, gap = 2): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)));
  return rows.map((row) =>
    " ".repeat(indent) + row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]! + gap))).join("").trimEnd(),
  );
}
