"""Login rate limiting: failed attempts per (user name, client address), time passed in.

After ``attempts`` failures within ``window`` seconds, that user from that address is refused
until the oldest failure leaves the window; a success clears the count. Keyed on both so an
attacker at one address cannot lock a dispatcher out from the control room's own address.
Memory is bounded: past ``max_keys`` keys the stalest are dropped (worst case: an attacker
spraying keys loses some of its own history, not a legitimate user's).
"""

from __future__ import annotations

from collections import OrderedDict, deque


class LoginLimiter:
    def __init__(self, attempts: int = 5, window: float = 300.0, max_keys: int = 10_000) -> None:
        self.attempts = attempts
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def retry_after(self, user: str, address: str, now: float) -> float:
        """Seconds until this user may try again from this address (0: now)."""
        times = self._failures.get((user.lower(), address))
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.attempts:
            return 0.0
        return times[0] + self.window - now

    def failed(self, user: str, address: str, now: float) -> None:
        key = (user.lower(), address)
        times = self._failures.pop(key, None) or deque(maxlen=self.attempts)
        times.append(now)
        self._failures[key] = times  # most recently failed last
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, user: str, address: str) -> None:
        self._failures.pop((user.lower(), address), None)
