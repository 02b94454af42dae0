"""Notifications: POST a JSON message to a webhook (Slack / Teams / Mattermost incoming webhooks,
or any HTTP endpoint).

The URL comes from the environment variable ``POSE_NOTIFY_WEBHOOK`` when set (keeps secrets
out of git), else params ``schedule.notify_webhook``; empty -> the message is only logged.
The body is ``{"event", "text", ...payload}`` (``text`` is what chat webhooks display).
Transient failures (connection errors, HTTP 429 / 5xx) are retried with exponential
backoff; a notification never raises (a failed notification must not fail a retrain).
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger(__name__)
ENV_VAR = "POSE_NOTIFY_WEBHOOK"


def webhook_url(notify_webhook: str | None) -> str:
    """The webhook URL: env ``POSE_NOTIFY_WEBHOOK``, else ``notify_webhook`` (params
    ``schedule.notify_webhook``, None when params.yaml cannot be read), else ''."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return env
    return str(notify_webhook or "").strip()


def notify(event: str, text: str, payload: dict | None = None, *, url: str | None = None, retries: int = 3,
           backoff: float = 1.0, timeout: float = 10.0) -> bool:
    """POST ``{"event", "text", **payload}`` to ``url``; True when delivered (2xx), False otherwise
    (no URL, or every attempt failed). Never raises."""
    body = {"event": event, "text": text, **(payload or {})}
    log.info("notify %s: %s", event, text)
    if not url:
        return False
    import requests

    data = json.dumps(body, default=str)
    for attempt in range(retries + 1):
        try:
            resp = requests.post(url, data=data, headers={"Content-Type": "application/json"}, timeout=timeout)
            if resp.status_code < 300:
                return True
            if resp.status_code != 429 and resp.status_code < 500:
                log.warning("webhook %s answered %s; not retried", url, resp.status_code)
                return False
            log.warning("webhook %s answered %s (attempt %d)", url, resp.status_code, attempt + 1)
        except requests.RequestException as exc:
            log.warning("webhook %s failed (attempt %d): %s", url, attempt + 1, exc)
        if attempt < retries:
            time.sleep(backoff * 2 ** attempt)
    return False
