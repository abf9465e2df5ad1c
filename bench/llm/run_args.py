"""The command line of bench/llm/run.py: its options, the per-model values some of them take
(``--rounds tiny=48,small=4``, ``--request-rate tiny=200/400,small=2/4``) and the load points
they make."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

import servers

T = TypeVar("T")
SIZES = {"tiny": "tiny", "small": "small"}
DEFAULT_MAX_TOKENS = 32  # the main tables' answer length


def load_points(a: argparse.Namespace) -> list[tuple[int, float]]:
    """(concurrency, request rate) of each point, in order: every offered rate at each
    concurrency (a closed loop has the one rate 0)."""
    return [(conc, rate) for conc in a.concurrency for rate in a.request_rate]


def rate_text(rate: float) -> str:
    return f" @ {rate:g}/s" if rate > 0 else ""


def parse_args(argv: list[str] | None, description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--servers", default=",".join(s.key for s in servers.SERVERS if s.peer),
                    help="comma-separated; default: ours and every peer (not our variants "
                         f"{', '.join(s.key for s in servers.SERVERS if not s.peer)})")
    ap.add_argument("--concurrency", default="1,4,16,32",
                    type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--rounds", type=parse_rounds, default={"*": 2},
                    help="requests per point = max(4, r x c); N, or per model: tiny=48,small=4")
    ap.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--point-seconds", type=float, default=120, help="time cap per point")
    ap.add_argument("--request-rate", type=parse_rates, default={"*": [0.0]},
                    help="open loop: each point's requests arrive at R per second (seeded "
                         "Poisson), at most c in flight; R/R2/..: a point per rate at each c; "
                         "per model: tiny=200/400,small=2/4; 0 (default): closed loop")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run the servers N times, alternated (the machine's speed drifts by "
                         "10-20 %% over minutes): tables keep every run, targets take the median")
    ap.add_argument("--paired", action="store_true",
                    help="with --repeats: start every server once and alternate them point by "
                         "point, the others stopped (SIGSTOP) meanwhile (each concurrency's runs "
                         "seconds apart, not a sweep apart)")
    ap.add_argument("--paired-limit", action="store_true",
                    help="with --paired: measure the in-process limit again before every pair "
                         "of points, at the pair's batch, every server stopped (the machine's "
                         "speed drifts; the percent of the limit then compares moments seconds "
                         "apart)")
    ap.add_argument("--ready-timeout", type=float, default=600)
    ap.add_argument("--server-core", default="0")
    ap.add_argument("--load-core", default="1")
    ap.add_argument("--update-doc", action="store_true")
    a = ap.parse_args(argv)
    if a.paired and any(len(rates) > 1 for rates in a.request_rate.values()):
        ap.error("--paired takes one request rate per model")
    return a


def _per_model(text: str, parse: Callable[[str], T], default: T) -> dict[str, T]:
    """``V`` (every model) or ``model=V,...`` (a model not named gets ``default``) ->
    {model or "*": parsed V}."""
    if "=" not in text:
        return {"*": parse(text)}
    out = {"*": default}
    for part in text.split(","):
        model, _, value = part.partition("=")
        if model.strip() not in SIZES:
            raise argparse.ArgumentTypeError(f"unknown model {model!r} (one of {', '.join(SIZES)})")
        out[model.strip()] = parse(value)
    return out


def parse_rounds(text: str) -> dict[str, int]:
    """``N`` (every model) or ``model=N,...`` (a model not named gets 2) -> {model or "*": N}."""
    return _per_model(text, _positive, 2)


def parse_rates(text: str) -> dict[str, list[float]]:
    """``R[/R...]`` (every model) or ``model=R[/R...],...`` (a model not named: 0, the closed
    loop) -> {model or "*": [rates]}."""
    return _per_model(text, _rates, [0.0])


def _rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split("/")]
    except ValueError:
        rates = []
    if not rates or any(not r >= 0 or r == float("inf") for r in rates) or (
            len(rates) > 1 and 0 in rates):
        raise argparse.ArgumentTypeError(
            f"a request rate is a number >= 0, or several > 0 joined by '/', not {text!r}")
    return rates


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"rounds must be a positive integer, not {text!r}")
    return int(text)


def rounds_for(rounds: dict[str, int], size: str) -> int:
    return rounds.get(size, rounds["*"])


def for_model(a: argparse.Namespace, size: str) -> argparse.Namespace:
    """The settings as they apply to model ``size``: its own request rates."""
    return argparse.Namespace(**{**vars(a), "request_rate": a.request_rate.get(
        size, a.request_rate["*"])})
