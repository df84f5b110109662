"""``memdesc path-status`` output: terminal tables (80 columns), JSON (docs/path-status.md) and
the plot (remaining sites per step by subsystem; progress between two trees)."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from typing import Any

from memdesc.analysis.path_rules import RULES, STEPS
from memdesc.analysis.path_status import (
    Site,
    StepProgress,
    TreeStatus,
    group_counts,
    subsystem,
)

WIDTH = 80
_SHORT = {1: "fs folio", 2: "rename", 3: "split", 4: "dynamic", 5: "32 B", 6: "16 B",
          7: "private"}


def _name(status: TreeStatus) -> str:
    return f"linux {status.tree.version}"


def headline(status: TreeStatus) -> list[str]:
    """The answer in a few lines."""
    rem = status.remaining()
    total = len(status.sites)
    files = len({s.file for s in status.sites})
    worst = max(STEPS, key=lambda st: rem[st.id])
    owners = Counter(status.owners.get(s.file, "(no entry)") for s in status.sites)
    lines = [f"{_name(status)}: {total:,} sites in {files:,} files still block the Path's "
             f"{len(STEPS)} steps; most for step {worst.id} ({worst.title}): "
             f"{rem[worst.id]:,}."]
    if owners:
        top = ", ".join(f"{t} {n:,}" for t, n in owners.most_common(3))
        lines.append(f"Most sites are owned by: {top}.")
    return [w for line in lines for w in textwrap.wrap(line, WIDTH)]


def step_table(status: TreeStatus) -> list[str]:
    rem, files = status.remaining(), status.files_per_step()
    by_sub: dict[int, Counter] = {st.id: Counter() for st in STEPS}
    for s in status.sites:
        by_sub[s.step][subsystem(s.file)] += 1
    out = [f"{'step':<4} {'title':<40} {'sites':>6} {'files':>5}  top subsystem",
           "-" * WIDTH]
    for st in STEPS:
        top = by_sub[st.id].most_common(1)
        where = f"{top[0][0]} {top[0][1]}" if top else "-"
        out.append(f"{st.id:<4} {st.title[:40]:<40} {rem[st.id]:>6,} {files[st.id]:>5,}  "
                   f"{where}"[:WIDTH])
    return out


def descriptor_line(status: TreeStatus, step: int = 3) -> list[str]:
    """Step 3's field uses by the descriptor they belong to, where it can be told."""
    c = Counter(s.descriptor or "?" for s in status.sites if s.step == step and s.kind == "field")
    if not c:
        return []
    text = f"Step {step} field uses by descriptor: " + ", ".join(
        f"{d} {n:,}" for d, n in c.most_common())
    return textwrap.wrap(text, WIDTH)


def group_table(status: TreeStatus, by: str, top: int) -> list[str]:
    """Rows: the ``top`` groups with most sites; columns: steps."""
    groups = group_counts(status, by)
    order = sorted(groups, key=lambda g: (-sum(groups[g].values()), g))[:top]
    name_w = WIDTH - 7 * len(STEPS) - 7
    head = f"{by:<{name_w}}" + "".join(f"{f'step {st.id}':>7}" for st in STEPS) + f"{'all':>7}"
    out = [f"Sites per {by} (top {len(order)} of {len(groups)})", head, "-" * WIDTH]
    for g in order:
        c = groups[g]
        label = g if len(g) <= name_w - 1 else "…" + g[-(name_w - 2):]
        out.append(f"{label:<{name_w}}" + "".join(f"{c.get(st.id, 0):>7,}" for st in STEPS)
                   + f"{sum(c.values()):>7,}")
    return out


def worklist(status: TreeStatus, top: int) -> list[str]:
    """Per file: owner, then each rule's line numbers; what a volunteer picks from."""
    per_file: dict[str, dict[str, list[int]]] = {}
    for s in status.sites:
        per_file.setdefault(s.file, {}).setdefault(s.rule, []).append(s.line)
    order = sorted(per_file, key=lambda f: (-sum(map(len, per_file[f].values())), f))[:top]
    out = [f"Worklist: the {len(order)} files with most sites (of {len(per_file)})"]
    lists = {e.title: e.lists[0] for e in (status.maintainers.entries
                                            if status.maintainers else []) if e.lists}
    for f in order:
        owner = status.owners.get(f, "")
        where = f"{owner}, {lists[owner]}" if owner in lists else owner
        out.append(f"{f}  [{where}]"[:WIDTH])
        for rule, lines in sorted(per_file[f].items()):
            text = f"{rule}: " + " ".join(str(n) for n in sorted(set(lines)))
            out.extend(textwrap.wrap(text, WIDTH, initial_indent="  ",
                                     subsequent_indent="      "))
    return out


def render(status: TreeStatus, by: str = "subsystem", top: int = 15) -> str:
    parts = [headline(status), [""], step_table(status), descriptor_line(status), [""]]
    parts.append(worklist(status, top) if by == "file" else group_table(status, by, top))
    s = status.stats
    parts.append([""] + textwrap.wrap(
        f"Scanned {s.files:,} C files, parsed {s.parsed:,} ({s.bytes_parsed / 2**20:,.0f} MiB) "
        f"with an index of {s.headers_indexed:,} headers, in {s.seconds:.1f} s.", WIDTH))
    return "\n".join(line for part in parts for line in part)


def render_progress(old: TreeStatus, new: TreeStatus, rows: list[StepProgress]) -> str:
    removed, added = sum(r.removed for r in rows), sum(r.added for r in rows)
    head = textwrap.wrap(
        f"{_name(old)} -> {_name(new)}: {removed:,} sites removed and {added:,} added; "
        f"{len(old.sites):,} -> {len(new.sites):,} remaining.", WIDTH)
    out = head + ["", f"{'step':<4} {'title':<40} {'old':>7} {'new':>7} {'removed':>8} "
                      f"{'added':>7}", "-" * 78]
    for r, st in zip(rows, STEPS, strict=True):
        out.append(f"{st.id:<4} {st.title[:40]:<40} {r.old:>7,} {r.new:>7,} {r.removed:>8,} "
                   f"{r.added:>7,}")
    return "\n".join(out)


# -- JSON ----------------------------------------------------------------------------------
def site_dict(s: Site, owners: dict[str, str]) -> dict[str, Any]:
    return {"file": s.file, "line": s.line, "step": s.step, "rule": s.rule, "kind": s.kind,
            "name": s.name, "field": s.field, "access": s.op, "via": s.via,
            "descriptor": s.descriptor,
            "maintainer": owners.get(s.file), "code": s.code}


def status_dict(status: TreeStatus) -> dict[str, Any]:
    rem, files = status.remaining(), status.files_per_step()
    steps = []
    for st in STEPS:
        rules = [r for r in RULES if r.step == st.id]
        steps.append({"id": st.id, "title": st.title, "stage": st.stage, "source": st.source,
                      "rule": "; ".join(r.text for r in rules),
                      "rules": [{"id": r.id, "text": r.text, "source": r.source}
                                for r in rules],
                      "remaining": rem[st.id], "files": files[st.id]})
    titles = set(status.owners.values())
    entries = {e.title: e.to_json() for e in (status.maintainers.entries
                                               if status.maintainers else [])
               if e.title in titles}
    s = status.stats
    return {"tree": str(status.tree.root), "version": status.tree.version,
            "scan": {"files": s.files, "parsed": s.parsed, "bytes_parsed": s.bytes_parsed,
                     "headers_indexed": s.headers_indexed, "seconds": round(s.seconds, 2)},
            "steps": steps, "maintainers": entries,
            "sites": [site_dict(x, status.owners) for x in status.sites]}


def document(new: TreeStatus, old: TreeStatus | None = None,
             rows: list[StepProgress] | None = None, removed: list[Site] | None = None,
             added: list[Site] | None = None) -> dict[str, Any]:
    doc = status_dict(new)
    if old is not None:
        doc["progress"] = {
            "old": {"tree": str(old.tree.root), "version": old.tree.version,
                    "remaining": len(old.sites)},
            "steps": [{"id": r.step, "old": r.old, "new": r.new, "removed": r.removed,
                       "added": r.added} for r in rows],
            "removed": [site_dict(s, old.owners) for s in removed],
            "added": [site_dict(s, new.owners) for s in added]}
    return doc


def to_json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()


# -- plot ----------------------------------------------------------------------------------
def render_png(new: TreeStatus, old: TreeStatus | None = None,
               rows: list[StepProgress] | None = None, top: int = 12) -> bytes:
    """Left: remaining sites per step stacked by subsystem (top ``top``, rest as 'other');
    right (two trees): old and new remaining per step, with removed/added."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memdesc.report.png import figure_png

    panels = 2 if old is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 6.2), dpi=110, squeeze=False)
    _stacked(axes[0][0], new, top)
    if old is not None:
        _progress(axes[0][1], old, new, rows)
    fig.tight_layout()
    data = figure_png(fig)
    plt.close(fig)
    return data


def _stacked(ax, status: TreeStatus, top: int) -> None:
    subs = Counter(subsystem(s.file) for s in status.sites)
    keep = [k for k, _ in subs.most_common(top)]
    per = {k: Counter() for k in keep + ["other"]}
    for s in status.sites:
        k = subsystem(s.file)
        per[k if k in per else "other"][s.step] += 1
    y = list(range(len(STEPS)))
    left = [0] * len(STEPS)
    cmap = __import__("matplotlib").colormaps["tab20"]
    for i, k in enumerate(keep + ["other"]):
        vals = [per[k].get(st.id, 0) for st in STEPS]
        colour = cmap(i % 20) if k != "other" else "#dddddd"
        ax.barh(y, vals, left=left, label=k, color=colour)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    for yi, total in zip(y, left, strict=True):
        ax.text(total, yi, f" {total:,}", va="center", fontsize=8)
    ax.set_yticks(y, [f"{st.id} {st.title}" for st in STEPS], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("remaining sites")
    ax.set_xlim(0, max(left + [1]) * 1.15)
    ax.set_title(f"{_name(status)}: what still blocks each step, by subsystem", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.11), ncol=5,
              title="subsystem", title_fontsize=7)


def _progress(ax, old: TreeStatus, new: TreeStatus, rows: list[StepProgress]) -> None:
    y = list(range(len(STEPS)))
    h = 0.38
    ax.barh([v - h / 2 for v in y], [r.old for r in rows], height=h, color="#bbbbbb",
            label=_name(old))
    ax.barh([v + h / 2 for v in y], [r.new for r in rows], height=h, color="#4c72b0",
            label=_name(new))
    peak = max([r.old for r in rows] + [r.new for r in rows] + [1])
    for v, r in zip(y, rows, strict=True):
        ax.text(max(r.old, r.new) + peak * 0.02, v, f"-{r.removed:,} +{r.added:,}",
                va="center", fontsize=8)
    ax.set_yticks(y, [f"{st.id} {_SHORT[st.id]}" for st in STEPS], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, peak * 1.3)
    ax.set_xlabel("remaining sites (removed / added between the trees)")
    ax.set_title(f"progress {old.tree.version} -> {new.tree.version}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
