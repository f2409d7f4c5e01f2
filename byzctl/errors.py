"""One error family for everything a user can get wrong, each naming the bad value."""


class ByzctlError(Exception):
    """Base of every error byzctl raises on purpose; the CLI prints it and exits 2."""

    exit_code = 2


class ConfigError(ByzctlError, ValueError):
    """A configuration value, override or cluster file is invalid."""


class RuleError(ByzctlError, ValueError):
    """A rule (aggregator, pre-aggregator, attack) was called outside its limits,
    e.g. too many Byzantine inputs for n."""


class LimitError(RuleError):
    """The RuleError of an f too large for n (the rule's tolerance), as opposed to bad
    parameters or inputs."""


class WireError(ByzctlError):
    """A message on the wire is malformed, forged or out of its window."""


class HandshakeError(ByzctlError):
    """A peer was refused at hello: wrong config hash, unknown id or identity."""


class PeerError(ByzctlError):
    """Peers are missing, dead or did not join in time."""


class DataError(ByzctlError):
    """A dataset cannot be found, read or parsed."""


def check_f(n: int, f: int, *, need: int, rule: str, formula: str) -> None:
    """Raise RuleError unless n >= need; `formula` states the rule's limit, e.g. 'n > 2f'."""
    if f < 0:
        raise RuleError(f"{rule}: f must be >= 0. Got f={f}")
    if n < need:
        raise LimitError(f"{rule} needs {formula}. Got n={n}, f={f}")
