"""The "apprise" transport: a delivery whose URL is an Apprise URL (Slack, Telegram, e-mail and
many more), sent by Apprise's own client with the body as the message text. Apprise connects
without the address guard, which is why only admin keys may create such deliveries' channels."""

import apprise

__all__ = ["TITLE", "notify", "understood"]

TITLE = "Errands"


def understood(url: str) -> bool:
    """Whether Apprise knows how to send to this URL."""
    return bool(apprise.Apprise.instantiate(url))


async def notify(url: str, text: str, *, timeout_s: float) -> str | None:
    """Send `text` to the Apprise URL; None once Apprise reports success, else why it failed."""
    notifier = apprise.Apprise()
    if not notifier.add(url):
        return "Apprise does not understand this URL"
    result = await notifier.async_notify(body=text, title=TITLE, timeout=timeout_s)
    if result:
        return None
    return f"Apprise could not notify (status {result.status.value})"
