"""The method: CS-KD losses and objectives, the CIFAR model zoo, data and the training engine.

Nothing here imports from ``pipeline``, ``stages`` or ``exports``.
"""
