"""One webhook delivery mechanism for every feature: enqueue a row in your transaction, and the
"deliveries" loop sends it (signed, retried, per-host limited) and logs each attempt."""

from errands.core.delivery.sending import deliver_webhooks
from errands.core.delivery.store import (
    NewDelivery,
    Status,
    count_by_status,
    enqueue,
    enqueue_all,
    get_delivery,
    list_deliveries,
)

__all__ = [
    "NewDelivery",
    "Status",
    "count_by_status",
    "deliver_webhooks",
    "enqueue",
    "enqueue_all",
    "get_delivery",
    "list_deliveries",
]
