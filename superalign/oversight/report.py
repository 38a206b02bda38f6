"""The scalable-oversight section of `superalign report`: judges, debate runs (accuracy with bootstrap CIs against the
judge alone and consultancy), reliability diagrams of the transcripts, and the deciding games drawn as the pixels
each debater revealed.

Strings from the store are HTML-escaped; pictures are drawn from move indices only (numbers)."""

from __future__ import annotations

import numpy as np

from ..runs.html import esc, figure, fmt, img, mpl_safe, read_jsonl, table
from .metrics import reliability

MAX_GAMES = 8  # deciding games drawn per debate run


def _pct(x) -> str:
    return fmt(x, pct=True)


def _debate_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        mcts = c.get("debater") == "mcts"
        debater = esc(c.get("debater")) + (f" ({fmt(c.get('rollouts'))} rollouts)" if mcts else "")
        rows.append([f"<code>{esc(r['id'][:16])}</code>", fmt(c.get("k")), debater,
                     "yes" if c.get("precommit", True) else "no", esc(c.get("first")), fmt(m.get("n_images")),
                     _pct(m.get("judge_alone_acc")),
                     f"{_pct(m.get('debate_acc'))} [{_pct(m.get('debate_acc_lo'))}, {_pct(m.get('debate_acc_hi'))}]",
                     _pct(m.get("consultancy_acc")), fmt(m.get("debate_ece")), fmt(m.get("games_per_image")),
                     fmt(m.get("debate_wall_s"))])
    return table(["run", "k", "debaters", "precommit", "first", "images", "judge alone", "debate [95% CI]",
                   "consultancy", "ECE", "games/image", "wall s"], rows, numeric={1, 5, 6, 7, 8, 9, 10, 11})


def _reliability_plot(runs: list[dict]) -> str:
    curves = []
    for r in runs:
        for key, name in (("transcript", "debate"), ("consultancy_transcript", "consultancy")):
            recs = read_jsonl((r.get("artefacts") or {}).get(key))
            if recs:
                conf = [float(x["probability"]) for x in recs]
                bins = [b for b in reliability(conf, [x["judge"] == x["answer"] for x in recs], 10) if b.count]
                c = r.get("config") or {}
                curves.append((f"{name} k={c.get('k')} {c.get('debater', '')} {r['id'][:8]}", bins))
    if not curves:
        return ""
    with mpl_safe():
        fig, (ax,) = figure(5, 4)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        for label, bins in curves:
            ax.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o-", label=label, ms=3)
        ax.set(xlabel="judge's probability for its answer", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title="reliability")
        ax.legend(fontsize=6)
        return img(fig, "reliability diagram of the judge on debate and consultancy transcripts")


def _games_plot(r: dict) -> str:
    """The deciding game of the first images: honest reveals blue, liar reveals red, numbered by turn."""
    recs = [x for x in read_jsonl((r.get("artefacts") or {}).get("transcript")) if x.get("shape")][:MAX_GAMES]
    if not recs:
        return ""
    first = (r.get("config") or {}).get("first", "honest")
    with mpl_safe():
        fig, axes = figure(1.6 * len(recs), 1.9, ncols=len(recs))
        for ax, x in zip(axes, recs):
            h, w = (int(v) for v in x["shape"])
            digit = np.zeros(h * w)
            digit[[int(p) for p in x.get("pixels", []) if 0 <= int(p) < h * w]] = 0.25  # the digit, faint
            ax.imshow(digit.reshape(h, w), cmap="Greys", vmin=0, vmax=1)
            for turn, p in enumerate(x["moves"]):
                honest = (turn % 2 == 0) == (first == "honest")
                ax.scatter([int(p) % w], [int(p) // w], c="tab:blue" if honest else "tab:red", s=28,
                           marker="o" if honest else "s")
                ax.annotate(str(turn + 1), (int(p) % w, int(p) // w), fontsize=6, color="black",
                            xytext=(3, 3), textcoords="offset points")
            lie = "" if x.get("lie") is None else f" vs {int(x['lie'])}"
            ax.set_title(f"#{int(x['image'])}: {int(x['answer'])}{lie} → {int(x['judge'])}", fontsize=7,
                         color="black" if x["judge"] == x["answer"] else "tab:red")
            ax.set_xticks([]), ax.set_yticks([])
        return img(fig, "revealed pixels of deciding debate games")


def oversight_section(runs: list[dict]) -> str:
    done = [r for r in runs if r["status"] == "done"]
    judges = [r for r in done if r["kind"] == "debate-judge"]
    debates = [r for r in done if r["kind"] == "debate"]
    if not (judges or debates):
        return ""
    parts = ["<h2>Scalable oversight: debate</h2>"]
    if judges:
        rows = [[f"<code>{esc(r['id'][:16])}</code>", fmt((r.get('config') or {}).get("k")),
                 esc((r.get("metrics") or {}).get("dataset")), fmt((r.get("config") or {}).get("epochs")),
                 _pct((r.get("metrics") or {}).get("judge_acc")), fmt((r.get("metrics") or {}).get("wall_s"))]
                for r in judges]
        parts += ["<h3>Sparse-pixel judges</h3><p class='muted'>accuracy over 10 classes with k random nonzero "
                  "pixels of each test image (Irving et al. 2018: 59.4% at k = 6, 48.2% at k = 4).</p>",
                  table(["run", "k", "data", "epochs", "judge alone", "wall s"], rows, numeric={1, 3, 4, 5})]
    if debates:
        parts += ["<h3>Debates</h3><p class='muted'>debate accuracy = share of images the honest debater wins "
                  "(with precommit: against all 9 lies); judge alone = k random nonzero pixels; consultancy = one "
                  "advocate, right or wrong at random; CIs are bootstrap over images.</p>", _debate_table(debates),
                  _reliability_plot(debates)]
        for r in debates:
            pic = _games_plot(r)
            if pic:
                parts += [f"<h4>Deciding games <code>{esc(r['id'][:16])}</code></h4><p class='muted'>blue circles: "
                          "honest reveals, red squares: liar reveals, numbered by turn, over the digit's nonzero "
                          "pixels (grey); title: image, true label vs lie → the judge's verdict (red when wrong).</p>",
                          pic]
    return "\n".join(parts)
