// SVG charts for the benchmark reports, drawn by vega-lite (compiled to vega, rendered headless
// with vega's SVG renderer: no browser, no canvas).
import * as vega from "vega";
import { compile, type TopLevelSpec } from "vega-lite";

export interface Bar {
  /** Category on the x axis. */
  label: string;
  value: number;
  /** Optional range drawn as a rule over the bar (e.g. min–max over rounds). */
  lo?: number;
  hi?: number;
  /** Bars of one label side by side, coloured by group. */
  group?: string;
}

export async function barChart(opts: { title: string; unit: string; bars: Bar[] }): Promise<string> {
  const grouped = opts.bars.some((b) => b.group !== undefined);
  const data = opts.bars.map((b) => ({ ...b, group: b.group ?? "" }));
  const x = {
    field: "label",
    type: "nominal",
    sort: null,
    title: null,
    axis: { labelAngle: -30, labelLimit: 240 },
  };
  const offset = grouped ? { xOffset: { field: "group", type: "nominal", sort: null } } : {};
  const layers: unknown[] = [
    {
      mark: { type: "bar", tooltip: true },
      encoding: {
        x,
        ...offset,
        y: { field: "value", type: "quantitative", title: opts.unit },
        ...(grouped ? { color: { field: "group", type: "nominal", sort: null, title: null } } : {}),
      },
    },
  ];
  if (opts.bars.some((b) => b.lo !== undefined && b.hi !== undefined)) {
    layers.push({
      mark: { type: "rule", color: "#333" },
      encoding: {
        x,
        ...offset,
        y: { field: "lo", type: "quantitative" },
        y2: { field: "hi" },
      },
    });
  }
  const spec = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: opts.title,
    width: Math.max(320, opts.bars.length * (grouped ? 28 : 56)),
    height: 260,
    data: { values: data },
    layer: layers,
  } as TopLevelSpec;
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
