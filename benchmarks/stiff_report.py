"""The markdown tables and target checks of ``benchmarks/stiff.py``'s report.

Rows and entries are the dictionaries that ``stiff.py`` measures: one per solve
(``format_single``), one per problem and rtol with the ratios against scipy
(``format_targets``), the sweep's results (``format_sweep``); ``check_targets``
says for each of the issue's targets whether it is met, with the measured ratios.
"""

from __future__ import annotations

from _common import markdown_table

SCIPY_METHODS = ("Radau", "BDF", "LSODA")
TIME_COLUMNS = {"scipy": "scipy", "scipy-torch": "scipy (torch f)"}
"""How each scipy variant (``library`` of a row) is named in the tables."""


def _fmt_time(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}" if seconds < 10 else f"{1e3 * seconds:.0f}"


def format_single(rows: list[dict]) -> str:
    headers = ["problem", "rtol", "atol", "solver", "NFE", "Jac", "LU", "steps", "error", "ms"]
    table = []
    for r in rows:
        steps = f"{r['accepted']}/{r['attempted'] if r['attempted'] is not None else '—'}"
        name = r["method"]
        if r["library"] == "scipy":
            name = f"scipy {name}"
        elif r["library"] == "scipy-torch":
            name = f"scipy {name} (torch f)"
        table.append(
            [
                r["problem"],
                f"{r['rtol']:.0e}",
                f"{r['atol']:.0e}",
                name,
                r["nfe"],
                r["jac"],
                r["lu"],
                steps,
                f"{r['error']:.1e}",
                _fmt_time(r["time"]),
            ]
        )
    return markdown_table(headers, table)


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def format_targets(entries: list[dict], methods) -> str:
    ours = [m for m in methods if m not in SCIPY_METHODS]
    libraries = [lib for lib in TIME_COLUMNS if any(lib in e["time"] for e in entries)]
    headers = ["problem", "rtol", *[f"{m} NFE ÷ Radau (equal tol / equal acc.)" for m in ours]]
    for library in libraries:
        name = TIME_COLUMNS[library]
        headers += [
            f"fastest neurode ÷ fastest {name}, same rtol",
            f"best neurode ÷ fastest {name}, equal acc.",
        ]
    table = []
    for e in entries:
        cells = []
        for m in ours:
            same, equal = e["nfe"].get(m, (None, None))
            cells.append(f"{_ratio(same)} / {_ratio(equal)}")
        for library in libraries:
            times = e["time"].get(library)
            if times is None:
                cells += ["—", "—"]
                continue
            cells.append(
                f"{times['same_tol']:.2f} ({times['ours']['method']} ÷ {times['theirs']['method']})"
            )
            equal = times["equal_acc"]
            cells.append("—" if equal is None else f"{equal[0]:.2f} ({equal[1]})")
        table.append([e["problem"], f"{e['rtol']:.0e}", *cells])
    return markdown_table(headers, table)


def format_sweep(sweep: dict) -> str:
    headers = [
        "solver",
        "mode",
        "NFE",
        "Jac",
        "LU",
        "steps mean / max",
        "error",
        "time (s)",
        "ms per row",
        "speed-up vs fastest scipy loop",
    ]
    results = sweep["results"]
    scipy_times = [r["time"] for r in results if r["library"] == "scipy"]
    fastest_scipy = min(scipy_times) if scipy_times else None
    table = []
    for r in results:
        if r["library"] == "scipy":
            name, mode = f"scipy {r['method']}", f"loop (per row, {sweep['scipy_rows']} timed)"
            nfe, jac, lu = f"{r['nfe']:.0f}", f"{r['jac']:.0f}", f"{r['lu']:.0f}"
        else:
            name, mode = r["method"], r["mode"]
            nfe, jac, lu = str(r["nfe"]), str(r["jac"]), str(r["lu"])
        speedup = f"{fastest_scipy / r['time']:.2g}×" if fastest_scipy else "—"
        table.append(
            [
                name,
                mode,
                nfe,
                jac,
                lu,
                f"{r['steps_mean']:.0f} / {r['steps_max']}",
                f"{r['error']:.1e}",
                f"{r['time']:.2f}",
                f"{1e3 * r['time'] / sweep['rows']:.2f}",
                speedup,
            ]
        )
    return markdown_table(headers, table)


def check_targets(entries: list[dict], sweep: dict | None) -> list[str]:
    """One line per target: met or not, with the measured ratios."""
    lines = []
    if entries:
        scipy_names = sorted({m for e in entries for m in e["scipy_methods"]})
        of = f" (of {', '.join(scipy_names)})"
        for method in ("rodas5p", "kvaerno5"):
            ratios = [
                (e["problem"], e["rtol"], e["nfe"][method][1])
                for e in entries
                if method in e["nfe"] and e["nfe"][method][1] is not None
            ]
            if not ratios:
                continue
            worst = max(ratios, key=lambda x: x[2])
            met = sum(1 for _, _, v in ratios if v <= 1.5)
            listed = ", ".join(f"{p} {t:.0e}: {v:.2f}" for p, t, v in ratios)
            lines.append(
                f"- NFE within 1.5× of Radau at equal accuracy, {method}: met in {met} of "
                f"{len(ratios)} comparable cases (worst {worst[2]:.2f}, {worst[0]} "
                f"{worst[1]:.0e}); {listed}."
            )
        for library in TIME_COLUMNS:
            timed = [e for e in entries if library in e["time"]]
            if not timed:
                continue
            against = f"scipy's fastest{of}" + (
                ", all given the torch f" if library != "scipy" else ""
            )
            same = [(e["problem"], e["rtol"], e["time"][library]["same_tol"]) for e in timed]
            met = sum(1 for _, _, v in same if v <= 2)
            listed = ", ".join(f"{p} {t:.0e}: {v:.2f}" for p, t, v in same)
            lines.append(
                f"- Wall time within 2× of {against}, same rtol: met in {met} of {len(same)} "
                f"({listed})."
            )
            equal = [
                (e["problem"], e["rtol"], e["time"][library]["equal_acc"][0])
                for e in timed
                if e["time"][library]["equal_acc"] is not None
            ]
            if equal:
                met = sum(1 for _, _, v in equal if v <= 2)
                listed = ", ".join(f"{p} {t:.0e}: {v:.2f}" for p, t, v in equal)
                lines.append(
                    f"- Wall time within 2× of {against}, equal accuracy: met in {met} of "
                    f"{len(equal)} comparable cases ({listed})."
                )
        floors = [e for e in entries if "floor" in e]
        if floors:
            listed = ", ".join(
                f"{e['problem']} {e['rtol']:.0e}: {e['floor']['nfe']} calls × f = "
                f"{1e3 * e['floor']['f_only']:.1f} ms against 2 × {e['floor']['method']} "
                f"{1e3 * e['floor']['scipy_time']:.1f} ms"
                for e in floors
            )
            unreachable = sum(
                1 for e in floors if e["floor"]["f_only"] > 2 * e["floor"]["scipy_time"]
            )
            lines.append(
                "- Floor of the comparison with NumPy functions: a solver that only called the "
                "torch f as often as scipy's fastest method calls its NumPy f would already "
                f"miss 2× in {unreachable} of {len(floors)} cases ({listed})."
            )
    if sweep:
        results = sweep["results"]
        scipy_times = {r["method"]: r["time"] for r in results if r["library"] == "scipy"}
        if scipy_times:
            fastest_name = min(scipy_times, key=scipy_times.get)
            for r in results:
                if r["library"] != "neurode":
                    continue
                speedup = scipy_times[fastest_name] / r["time"]
                verdict = "met" if speedup >= 20 else "not met"
                lines.append(
                    f"- Sweep ≥ 20× faster than scipy in a loop, {r['method']} {r['mode']}: "
                    f"{verdict}, {speedup:.2g}× against {fastest_name} (the fastest scipy loop)"
                    + (
                        f", {scipy_times['Radau'] / r['time']:.3g}× against Radau"
                        if "Radau" in scipy_times and fastest_name != "Radau"
                        else ""
                    )
                    + "."
                )
    return lines
