"""Which versions of a model to serve: Triton's version policy, from config.pbtxt or the --version-policy
flag.

Flag syntax: ``latest`` (the newest), ``latest:N`` (the N newest), ``all``, ``specific:1,3``.
"""

from dataclasses import dataclass

from serving.protocol import model_config_pb2


@dataclass(frozen=True)
class VersionPolicy:
    kind: str
    count: int = 1
    versions: frozenset[int] = frozenset()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        """Parses the flag syntax.

        Raises:
            ValueError: a one-line message with the accepted forms.
        """
        usage = "expected latest, latest:N, all or specific:V1,V2 (positive integers)"
        kind, _, argument = text.strip().partition(":")
        try:
            if kind == "latest":
                count = int(argument) if argument else 1
                if count >= 1:
                    return cls("latest", count=count)
            elif kind == "all" and not argument:
                return cls("all")
            elif kind == "specific" and argument:
                versions = frozenset(int(v) for v in argument.split(","))
                if min(versions) >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(f"invalid version policy {text!r}: {usage}")

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> "VersionPolicy":
        """Triton's rule: no policy means the latest version."""
        policy = config.version_policy
        choice = policy.WhichOneof("policy_choice")
        if choice == "all":
            return cls("all")
        if choice == "specific":
            return cls("specific", versions=frozenset(int(v) for v in policy.specific.versions))
        if choice == "latest" and policy.latest.num_versions > 0:
            return cls("latest", count=policy.latest.num_versions)
        return cls("latest")

    def select(self, available: list[int]) -> set[int]:
        """The versions to serve among ``available`` (the loadable ones)."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return self.versions & set(available)
        return set(sorted(available)[-self.count :])

    def __str__(self) -> str:
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in sorted(self.versions))
        return f"latest:{self.count}" if self.kind == "latest" else "all"
