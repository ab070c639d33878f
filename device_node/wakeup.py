"""Wake a device process when the contract emits an event, over its node's WebSocket.

web3.py's own subscription API (AsyncWeb3 + WebSocketProvider, `eth.subscribe("logs")`)
runs in a background thread with its own event loop; the device loop stays synchronous and
simply waits on a threading.Event. When the socket is down the wait times out and the loop
polls over HTTP instead, so a lost subscription slows a device but never stalls it.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from web3 import AsyncWeb3, WebSocketProvider

log = logging.getLogger(__name__)


class ContractWakeup:
    def __init__(self, ws_url: str, address: str, topics: list[str] | None = None,
                 retry_s: float = 1.0) -> None:
        self.ws_url = ws_url
        self.address = address
        self.topics = topics  # wake only on these events (any of them); None: every event
        self.retry_s = retry_s
        self._event = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ws-wakeup", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, wait_s: float = 5.0) -> None:
        self._thread.start()
        self._connected.wait(wait_s)

    def wait(self, timeout: float) -> bool:
        """Block until an event arrived (True) or `timeout` passed (False)."""
        hit = self._event.wait(timeout)
        self._event.clear()
        return hit

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=0.5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                asyncio.run(self._listen())
            except Exception as e:  # noqa: BLE001 - any socket failure: fall back to polling
                log.info("ws subscription down (%s); polling until it is back", e)
            self._connected.clear()
            self._event.set()  # something may have been missed: make the loop look now
            self._stop.wait(self.retry_s)

    async def _listen(self) -> None:
        async with AsyncWeb3(WebSocketProvider(self.ws_url)) as w3:
            flt: dict = {"address": self.address}
            if self.topics:
                flt["topics"] = [self.topics]
            await w3.eth.subscribe("logs", flt)
            self._connected.set()
            async for _ in w3.socket.process_subscriptions():
                self._event.set()
                if self._stop.is_set():
                    return
