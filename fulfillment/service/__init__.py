from fulfillment.service.orders import OrderService
from fulfillment.service.saga import OrderSaga, RetryPolicy, SagaActions

__all__ = ["OrderSaga", "OrderService", "RetryPolicy", "SagaActions"]
