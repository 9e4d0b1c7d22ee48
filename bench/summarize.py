#!/usr/bin/env python3
"""Turns a bench run's facts.tsv into the markdown table of bench/RESULTS.md.

Usage: bench/summarize.py bench/out/<run>
"""
import sys
from pathlib import Path


def load(run: Path) -> dict:
    facts = {}
    for line in (run / "facts.tsv").read_text().splitlines():
        if "\t" in line:
            key, value = line.split("\t", 1)
            facts[key] = value
    return facts


def num(value):
    try:
        return float(str(value).rstrip("msu"))
    except ValueError:
        return None


def wrk_ms(value):
    """wrk prints latencies as 1.23ms, 850.00us or 1.02s."""
    if value is None:
        return None
    for suffix, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * scale
    return None


def main() -> None:
    run = Path(sys.argv[1])
    f = load(run)
    g = f.get
    rows = []

    def row(bench, figure, value, target="", met=None):
        mark = "" if met is None else ("yes" if met else "**no**")
        rows.append((bench, figure, value, target, mark))

    if "01-seed.requests" in f:
        p99 = num(g("01-seed.p99_ms"))
        row("1 seed profile", "requests (req/s)", f"{g('01-seed.requests')} ({g('01-seed.requests_per_s')})")
        row("1 seed profile", "failures", g("01-seed.failures"), "0", num(g("01-seed.failures")) == 0)
        row("1 seed profile", "p50 / p95 / p99 / max ms",
            f"{g('01-seed.p50_ms')} / {g('01-seed.p95_ms')} / {g('01-seed.p99_ms')} / {g('01-seed.max_ms')}",
            "p99 <= 2850", p99 is not None and p99 <= 2850)
        row("1 seed profile", "upstream calls; cache hit ratio",
            f"{g('01-seed.upstream_calls')}; {g('01-seed.cache_hit_ratio')}")
        row("1 seed profile", "service peak RSS", f"{int(num(g('01-seed.service_vmhwm_kib')) / 1024)} MiB")
    if "01b-zipf.requests" in f:
        row("1b Zipf questions", "requests; failures", f"{g('01b-zipf.requests')}; {g('01b-zipf.failures')}")
        row("1b Zipf questions", "p50 / p95 / p99 / max ms",
            f"{g('01b-zipf.p50_ms')} / {g('01b-zipf.p95_ms')} / {g('01b-zipf.p99_ms')} / {g('01b-zipf.max_ms')}")
        row("1b Zipf questions", "upstream calls; cache hit ratio",
            f"{g('01b-zipf.upstream_calls')}; {g('01b-zipf.cache_hit_ratio')}")
    for case, bound, expect in (("02a-offered", "offered 20/s", 20.0),
                                ("02b-semaphore", "100 / 2.8 s = 35.7/s", 100 / 2.8)):
        if f"{case}.requests" in f:
            rate = num(g(f"{case}.upstream_rate_per_s"))
            peak = num(g(f"{case}.upstream_in_flight_peak"))
            row(f"2 {case}", "upstream calls/s (bound)", f"{g(f'{case}.upstream_rate_per_s')} ({bound})",
                f"~{expect:.1f}", rate is not None and abs(rate - expect) <= 0.1 * expect)
            row(f"2 {case}", "sim in-flight peak; failures",
                f"{g(f'{case}.upstream_in_flight_peak')}; {g(f'{case}.failures')}", "peak <= 100",
                peak is not None and peak <= 100)
    if "02c-quota.requests" in f:
        most = num(g("02c-quota.upstream_max_in_60s"))
        row("2 02c-quota", "calls in any 60 s (quota 300)", g("02c-quota.upstream_max_in_60s"), "<= 300",
            most is not None and most <= 300)
        row("2 02c-quota", "requests: ok / refused (503)",
            f"{g('02c-quota.ok')} / {g('02c-quota.failures')} of {g('02c-quota.requests')}")
    for c in (64, 256):
        svc, hello = g(f"03-service-c{c}.requests_per_s"), g(f"03-hello-c{c}.requests_per_s")
        if svc and hello:
            ratio = num(svc) / num(hello)
            row(f"3 cache hits c={c}", "req/s service / hello-world", f"{svc} / {hello} ({ratio:.0%})",
                ">= 50%", ratio >= 0.5)
            row(f"3 cache hits c={c}", "p99 service / hello-world",
                f"{g(f'03-service-c{c}.p99')} / {g(f'03-hello-c{c}.p99')}")
    rounds = sorted({k.split("-")[-1] for k in f if k.startswith("04.overhead_p99_ms-")})
    if rounds:
        over50 = [num(g(f"04.overhead_p50_ms-{r}")) for r in rounds]
        over99 = [num(g(f"04.overhead_p99_ms-{r}")) for r in rounds]
        for r in rounds:
            row("4 overhead", f"round {r}: p50 / p99 direct vs service ms",
                f"{g(f'04-direct-{r}.p50_ms')} / {g(f'04-direct-{r}.p99_ms')} vs "
                f"{g(f'04-service-{r}.p50_ms')} / {g(f'04-service-{r}.p99_ms')} "
                f"(failures {g(f'04-direct-{r}.failures')} / {g(f'04-service-{r}.failures')})")
        med99 = sorted(over99)[len(over99) // 2]
        row("4 overhead", "overhead p50 per round ms", " / ".join(str(x) for x in over50))
        row("4 overhead", "overhead p99 per round ms (median)",
            " / ".join(str(x) for x in over99) + f" ({med99})", "p99 < 1 ms", med99 < 1.0)
        nginx99 = [num(g(f"04.nginx_overhead_p99_ms-{r}")) for r in rounds]
        if all(x is not None for x in nginx99):
            nginx50 = [num(g(f"04.nginx_overhead_p50_ms-{r}")) for r in rounds]
            row("4 overhead", "nginx's overhead (the floor) p50 / p99 per round ms",
                " / ".join(f"{a} / {b}" for a, b in zip(nginx50, nginx99)))
            beyond = sorted(s - n for s, n in zip(over99, nginx99))[len(rounds) // 2]
            row("4 overhead", "service p99 overhead beyond nginx's (median) ms", f"{beyond:.3f}")
    if "05.upstream_calls" in f:
        row("5 herd", "upstream calls for 500 identical", g("05.upstream_calls"), "1",
            num(g("05.upstream_calls")) == 1)
        row("5 herd", "time to answer all; ok", f"{g('05.time_to_answer_all_ms')} ms; {g('05.ok')}")
    def mib(key):
        v = num(g(key))
        return None if v is None else v / 1024

    for case, what in (("06a", "1000 busy keep-alive connections"),
                       ("06b", "1000 connections waiting on 1 model call"),
                       ("06c", "1000 connections + 1000 model calls (max_concurrency 1000)")):
        peak = mib(f"{case}.vmhwm_kib")
        if peak is not None:
            row(f"6 memory {case}", f"peak RSS, {what}", f"{peak:.1f} MiB", "< 64 MB", peak * 1.048576 < 64)
    if "06.idle_vmrss_kib" in f and "06a.hello_vmhwm_kib" in f:
        row("6 memory", "idle RSS; hello-world under 6a's load",
            f"{mib('06.idle_vmrss_kib'):.1f} MiB; {mib('06a.hello_vmhwm_kib'):.1f} MiB")

    for case, what in (("12a-cached", "cache hits"), ("12b-coalesced", "coalesced"),
                       ("12c-fresh", "fresh")):
        if f"{case}.ttft_p50_ms" not in f:
            continue
        bench = f"12 streaming, {what}"
        row(bench, "requests; failures", f"{g(case + '.requests')}; {g(case + '.failures')}", "0 failures",
            num(g(case + ".failures")) == 0)
        row(bench, "TTFT p50 / p99 ms (all streams)", f"{g(case + '.ttft_p50_ms')} / {g(case + '.ttft_p99_ms')}")
        row(bench, "total p50 / p99 ms", f"{g(case + '.total_p50_ms')} / {g(case + '.total_p99_ms')}")
        row(bench, "upstream calls per distinct question",
            g(case + ".upstream_calls_per_distinct_question"),
            {"12a-cached": "0", "12b-coalesced": "1", "12c-fresh": "1"}[case],
            num(g(case + ".upstream_calls_per_distinct_question"))
            == {"12a-cached": 0, "12b-coalesced": 1, "12c-fresh": 1}[case])
    if "12a-cached.cached_ttft_p50_ms" in f:
        p50 = num(g("12a-cached.cached_ttft_p50_ms"))
        row("12 streaming, cache hits", "cached TTFT p50 / p99 ms",
            f"{g('12a-cached.cached_ttft_p50_ms')} / {g('12a-cached.cached_ttft_p99_ms')}",
            "p50 < 10 ms", p50 is not None and p50 < 10)
    if "12b-coalesced.ttft_p99_after_first_chunk_ms" in f:
        late = num(g("12b-coalesced.ttft_p99_after_first_chunk_ms"))
        row("12 streaming, coalesced", "TTFT p99 after the model's first chunk",
            f"{g('12b-coalesced.ttft_p99_after_first_chunk_ms')} ms", "< 1000 ms",
            late is not None and late < 1000)

    print("| benchmark | figure | measured | target | met |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    loads = [f"{k[5:]}: {v}" for k, v in f.items() if k.startswith("load.")]
    if loads:
        print()
        print("Load average (1, 5, 15 min) when each benchmark started: " + "; ".join(loads))


if __name__ == "__main__":
    main()
