"""The engine: what every task and analyzer computes with (the forward pass, classes, feature maps, CAMs).

Nothing here knows a task, a loader or TensorBoard.
"""
