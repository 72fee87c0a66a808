"""A small pool of identical Ray actors for the driver: submit a call to an idle actor, collect results, and replace
an actor whose process died, re-submitting its call a bounded number of times."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class _Call:
    key: Any
    method: str
    args: tuple
    actor: Any
    tries: int


class ActorPool:
    """`size` actors of `actor_cls` (a ray.remote class) built with `init_args`. `submit(key, method, *args)` queues
    a call; `wait()` returns the finished calls as (key, error, result): error is None, the exception the call raised,
    or a RuntimeError once its actor died more than `max_retries` times (a call whose actor died is re-run on a
    fresh actor until then)."""

    def __init__(self, ray, actor_cls, size: int, init_args: tuple = (), max_retries: int = 2,
                 on_event: Optional[Callable[[dict], None]] = None):
        self.ray = ray
        self._cls, self._init = actor_cls, init_args
        self.max_retries = max_retries
        self.on_event = on_event
        self.idle = [actor_cls.remote(*init_args) for _ in range(size)]
        self.size = size
        self.running: dict = {}
        self.queue: list[_Call] = []

    def submit(self, key, method: str, *args) -> None:
        self.queue.append(_Call(key, method, args, None, 0))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            call = self.queue.pop(0)
            call.actor, call.tries = self.idle.pop(0), call.tries + 1
            self.running[getattr(call.actor, call.method).remote(*call.args)] = call

    @property
    def busy(self) -> int:
        return len(self.running) + len(self.queue)

    def has_idle(self) -> bool:
        return bool(self.idle) and not self.queue

    def wait(self, timeout: Optional[float] = None) -> list:
        """Block until at least one call finished (or `timeout`); returns [(key, error, result), ...]."""
        done = []
        if not self.running:
            return done
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        for ref in ready:
            call = self.running.pop(ref)
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayActorError as e:
                self.ray.kill(call.actor)
                self.idle.append(self._cls.remote(*self._init))
                if call.tries > self.max_retries:
                    done.append((call.key, RuntimeError(f"its actor died {call.tries} times; last: "
                                                        f"{str(e).splitlines()[0]}"), None))
                    continue
                if self.on_event:
                    self.on_event({"kind": "retry", "key": call.key, "attempt": call.tries + 1})
                self.queue.insert(0, call)
                continue
            except self.ray.exceptions.RayTaskError as e:
                self.idle.append(call.actor)
                cause = getattr(e, "cause", None)
                done.append((call.key, cause if isinstance(cause, Exception) else e, None))
                continue
            self.idle.append(call.actor)
            done.append((call.key, None, result))
        self._dispatch()
        return done

    def shutdown(self) -> None:
        for a in self.idle + [c.actor for c in self.running.values()]:
            self.ray.kill(a)
        self.idle, self.running, self.queue = [], {}, []
