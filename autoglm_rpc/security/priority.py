"""Who may ask for PRIORITY_HIGH.

A high-priority request is scheduled before the others, so where API keys are configured it is a privilege of the
key owners named in the setting `high_priority_owners`; a request of any other owner that asks for it ends
PERMISSION_DENIED naming the field. Without API keys every caller is the same anonymous caller, and any may ask.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm_rpc.core.errors import PermissionDenied
from workers.protocol import Priority


@dataclass(frozen=True, slots=True)
class PriorityPolicy:
    """`high_priority_owners`: the owners that may use PRIORITY_HIGH (only consulted for callers with a key)."""

    high_priority_owners: frozenset[str] = frozenset()

    @classmethod
    def from_setting(cls, value: str | None, key_owners: frozenset[str] | None) -> PriorityPolicy:
        """Parse the comma-separated setting; ValueError for a name that owns no key."""
        names = frozenset(filter(None, (name.strip() for name in (value or "").split(","))))
        if names and key_owners is None:
            raise ValueError("high_priority_owners: needs API keys (api_keys_file or api_keys)")
        unknown = sorted(names - (key_owners or frozenset()))
        if unknown:
            raise ValueError(f"high_priority_owners: {', '.join(unknown)} own(s) no API key")
        return cls(names)

    def check(self, priority: Priority, owner: str | None) -> None:
        """Raise PermissionDenied when `owner` (None: no authentication) may not use `priority`."""
        if priority is Priority.HIGH and owner is not None and owner not in self.high_priority_owners:
            raise PermissionDenied(
                "priority: PRIORITY_HIGH is reserved for the API key owners named in high_priority_owners"
            )
