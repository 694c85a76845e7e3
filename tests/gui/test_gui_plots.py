"""Plots that hold still and read well (issue 28): fixed series colours, legends off the data, sane
axes with one point, the compare view. Headless where the logic is separable; the real window under
Xvfb where the look is the point (figures are saved under tests/artifacts/ to look at)."""

import json

import pytest

from bitttt_gui.colors import PALETTE, SeriesColors
from bitttt_gui.curve import padded_range, step_range

from conftest import ARTIFACTS
from test_gui_app import make_app, settle  # noqa: F401  (make_app is a fixture)


# -- headless ----------------------------------------------------------------------------
def test_series_colors_are_fixed_per_name():
    colors = SeriesColors()
    first = [colors(n) for n in ("attn", "mlp", "o_proj")]
    assert first == list(PALETTE[:3])
    assert [colors(n) for n in ("o_proj", "attn", "mlp", "attn")] == [first[2], first[0], first[1], first[0]]


def test_padded_range_has_a_minimum_span_inside_its_bounds():
    lo, hi = padded_range([0.306, 0.311], 0.10, 0.0, 1.0)
    assert hi - lo == pytest.approx(0.10) and lo < 0.306 and hi > 0.311
    assert padded_range([0.01], 0.10, 0.0, 1.0) == (0.0, pytest.approx(0.10))
    assert padded_range([0.99], 0.10, 0.0, 1.0) == (pytest.approx(0.90), 1.0)
    lo, hi = padded_range([0.1, 0.9], 0.10, 0.0, 1.0)
    assert lo <= 0.1 and hi >= 0.9 and hi - lo < 1.0      # wide data keeps its own range


def test_step_range_gives_whole_steps_around_one_report():
    assert step_range([50]) == (49, 51)
    assert step_range([0]) == (-0.5, 1)
    lo, hi = step_range([10, 1000])
    assert lo < 10 and hi > 1000 and hi - lo < 1100


# -- the real window ---------------------------------------------------------------------
def _extents(fig, texts):
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_visible() and t.get_text()]


def _overlapping(boxes) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _ternary(step, groups):
    return {"event": "ternary", "step": step,
            "groups": {g: {"zero_frac": z, "flip_frac": f, "scale": s} for g, (z, f, s) in groups.items()}}


def _draw(tab, name):
    tab.redraw()
    tab.canvas.draw()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.figure.savefig(ARTIFACTS / f"{name}.png")


@pytest.mark.gui
def test_ternary_plot_holds_still_and_reads_well(make_app):
    app = make_app()
    tab = app.tabs["ternary"]
    app.root.geometry("1180x728")
    app.show_tab("ternary")
    settle(app.root, 0.3)
    groups = {"o_proj": (0.306, 0.0, 0.02), "qkv": (0.308, 0.0, 0.019), "mlp": (0.31, 0.0, 0.018)}
    app.bus.publish("train.started", app.workspace / "runs" / "t", [])
    app.bus.publish("train.record", _ternary(0, groups), "stdout")
    _draw(tab, "ternary-one-report")

    # One report: whole-number step ticks that do not run into each other.
    for ax in tab.axes.values():
        labels = [t for t in ax.get_xticklabels() if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
        assert labels and not _overlapping(_extents(tab.figure, labels)), ax.get_title()
        assert all(float(t.get_position()[0]).is_integer() for t in labels)
        assert all(t.get_text().lstrip("−-").isdigit() for t in labels if t.get_text())
    colors = {line.get_label(): line.get_color() for ax in tab.axes.values() for line in ax.lines}

    for step in (10, 20, 30):
        app.bus.publish("train.record", _ternary(step, {g: (z + 0.001 * step, 0.01, s) for g, (z, _, s)
                                                        in groups.items()}), "stdout")
        _draw(tab, "ternary-four-reports")
        # The same colour per group at every redraw, in every panel.
        assert {line.get_label(): line.get_color() for ax in tab.axes.values() for line in ax.lines} == colors
    assert len(set(colors.values())) == 3

    # The share at 0 moved by 3 points: the axis shows at least 10, not a zoom into the noise.
    lo, hi = tab.axes["zero_frac"].get_ylim()
    assert hi - lo >= 0.10 - 1e-9 and lo <= 0.306 and hi >= 0.34

    # The legend covers no panel (so never the newest points).
    renderer = tab.figure.canvas.get_renderer()
    legends = [lg for lg in [tab.figure.legends and tab.figure.legends[0]] if lg] + \
              [ax.get_legend() for ax in tab.axes.values() if ax.get_legend()]
    assert legends, "no legend"
    for lg in legends:
        box = lg.get_window_extent(renderer)
        for ax in tab.axes.values():
            assert not box.overlaps(ax.get_window_extent(renderer)), f"the legend covers {ax.get_title()}"


@pytest.mark.gui
def test_chat_drift_plot_holds_still_and_reads_well(make_app, screenshot):
    app = make_app()
    chat = app.tabs["chat"]
    app.root.geometry("1180x728")
    app.show_tab("chat")
    settle(app.root, 0.3)
    layers = [0, 1, 2]
    chat._on_memory({"layers": layers, "drift": [0.0, 0.0, 0.0], "turn_change": 0}, False)   # "ready"
    fig, ax = chat.mem_figure, chat.mem_ax
    fig.canvas.draw()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(ARTIFACTS / "chat-drift-one-point.png")
    lo, hi = ax.get_xlim()
    assert lo > -0.9 and hi >= 1 and hi - lo <= 3     # one point at turn 0: about 0..1, not -0.2..0.2
    ticks = [t for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    assert ticks and all(float(t.get_position()[0]).is_integer() for t in ticks)
    colors = {line.get_label(): line.get_color() for line in ax.lines}
    for turn in range(1, 4):
        chat._on_memory({"layers": layers, "drift": [0.01 * turn * (i + 1) for i in layers]}, True)
        fig.canvas.draw()
        assert {line.get_label(): line.get_color() for line in ax.lines} == colors   # fixed per layer
    fig.savefig(ARTIFACTS / "chat-drift-four-turns.png")
    settle(app.root, 0.3)
    screenshot("chat-drift-window")
    assert len(set(colors.values())) == len(layers)

    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + ([ax.get_legend()] if ax.get_legend() else [])
    assert legends and not any(lg.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
                               for lg in legends), "the legend covers the plot"
    texts = ([ax.xaxis.label, ax.yaxis.label] + ax.get_xticklabels() + ax.get_yticklabels()
             + [t for lg in legends for t in lg.get_texts()])
    assert min(t.get_fontsize() for t in texts if t.get_text()) >= 9


def _write_run(root, name, *, preset, mixer, ternary, steps, speed, bpbs):
    """A finished run folder as the trainer leaves it: config.json (DESIGN §5) and events.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"mixer": mixer, "ternary": ternary, "training": {
        "preset": preset, "steps": steps, "batch_size": 4, "seq_len": 32, "grad_accum": 2, "tokenizer": "byte"}}))
    events = [{"event": "start", "config": {"batch_size": 4, "seq_len": 32, "grad_accum": 2, "tokenizer": "byte"}}]
    for step in range(1, steps + 1):
        events.append({"event": "step", "step": step, "total_steps": steps, "loss": 5.0 - 0.01 * step,
                       "tokens_per_s": speed})
        if step % (steps // len(bpbs)) == 0:
            bpb = bpbs[step // (steps // len(bpbs)) - 1]
            events.append({"event": "eval", "step": step, "val_loss": bpb * 0.6931, "val_bpb": bpb})
    events.append({"event": "done", "step": steps, "reason": "completed"})
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def _legend_texts(ax):
    lg = ax.get_legend()
    return [t.get_text() for t in lg.get_texts()] if lg else []


@pytest.mark.gui
def test_compare_names_every_line_and_tables_the_runs(make_app, screenshot):
    app = make_app()
    plot = app.tabs["plot"]
    app.root.geometry("1180x728")
    runs = app.workspace / "runs"
    a = _write_run(runs, "alpha", preset="tiny", mixer="ttt_linear", ternary=True, steps=40, speed=2000.0,
                   bpbs=[3.0, 2.5, 2.25, 2.4])
    b = _write_run(runs, "beta", preset="small", mixer="attention", ternary=False, steps=20, speed=1500.0,
                   bpbs=[3.5, 3.1])
    plot.open_events(a)                  # the tab's own run, as after Show curve
    plot.y_axis.set("bpb")
    plot.redraw()
    texts = _legend_texts(plot.ax)
    assert texts and all("loss" not in t for t in texts) and any("bits per byte" in t for t in texts), texts

    plot.compare([a, b])
    plot.redraw()
    settle(app.root, 0.3)
    plot.canvas.draw()
    screenshot("compare-window")
    plot.figure.savefig(ARTIFACTS / "compare-plot.png")
    drawn = [line for line in plot.ax.lines if line.get_visible() and len(line.get_xdata())]
    assert drawn and all(line.get_label().startswith(("alpha", "beta")) for line in drawn), \
        [line.get_label() for line in drawn]
    assert all(t.startswith(("alpha", "beta")) for t in _legend_texts(plot.ax))

    table = plot.compare_table
    assert table.winfo_ismapped()
    rows = [table.item(i, "values") for i in table.get_children()]
    cols = list(table["columns"])
    got = [dict(zip(cols, r)) for r in rows]
    assert [(r["name"], r["preset"], r["mixer"], r["weights"], r["steps"], r["tokens"], r["best_bpb"],
             r["tokens_per_s"]) for r in got] == [
        ("alpha", "tiny", "ttt_linear", "ternary", "40", "10.24k", "2.250", "2.00k"),
        ("beta", "small", "attention", "float", "20", "5.12k", "3.100", "1.50k")]

    plot.compare([])                     # Clear comparison
    plot.redraw()
    title = plot.title.cget("text")
    assert not ("alpha" in title and "beta" in title), title
    assert not table.winfo_ismapped()


@pytest.mark.gui
def test_a_resumed_run_shows_all_its_steps_and_no_false_zero_flips(make_app):
    app = make_app()
    plot, tern = app.tabs["plot"], app.tabs["ternary"]
    run = app.workspace / "runs" / "resumed"
    run.mkdir(parents=True)
    groups = lambda flips: {g: {"zero_frac": 0.3, "flip_frac": flips, "scale": 0.02} for g in ("attn", "mlp")}
    first = [{"event": "start", "start_step": 0, "config": {}}]
    for step in range(1, 41):   # the first session: 40 steps, a report every 10, stopped at 40
        first.append({"event": "step", "step": step, "loss": 5.0 - 0.05 * step})
        if step % 10 == 0:
            first += [{"event": "eval", "step": step, "val_loss": 4.0}, {"event": "ternary", "step": step,
                                                                           "groups": groups(0.0 if step == 10 else 0.02)}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in first))

    # Resumed from the checkpoint at step 30: the trainer appends to the same events.jsonl.
    app.bus.publish("train.started", run, ["train", "--resume", str(run)])
    resumed = [{"event": "start", "start_step": 30, "resumed_from": str(run / "checkpoints" / "step-000030"),
                "config": {}}]
    for step in range(31, 51):
        resumed.append({"event": "step", "step": step, "loss": 3.0 - 0.01 * step})
        if step % 10 == 0:
            resumed.append({"event": "ternary", "step": step, "groups": groups(0.0 if step == 40 else 0.03)})
    for ev in resumed:
        app.bus.publish("train.record", ev, "stdout")
    _draw(plot, "resumed-loss-curve")
    _draw(tern, "resumed-ternary")

    assert plot.curve.train_steps == list(range(1, 51))              # all steps, each once
    assert plot.curve.val_steps == [10, 20, 30]     # the old session's evaluation at 40 is superseded
    assert plot.curve.train_loss[29] == pytest.approx(3.5) and plot.curve.train_loss[30] == pytest.approx(2.69)
    h = tern.history.groups["mlp"]
    assert h["step"] == [10, 20, 30, 40, 50]
    flips = h["flip_frac"]
    assert flips[1:3] == [0.02, 0.02] and flips[4] == 0.03
    assert flips[3] != flips[3] and flips[0] != flips[0]   # the first report of each session: unknown, not 0 %
