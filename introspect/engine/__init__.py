"""The engine: what every task and analyzer computes with (the forward pass, targets, classes, feature maps,
CAMs). Nothing here knows a task, a loader or TensorBoard.

- :mod:`introspect.engine.forward`: :func:`~introspect.engine.forward.run_forward`, the one forward pass
  (captures, gradient leaves of a tensor or a dict of maps, raw outputs, a detector's canvas), and
  :func:`~introspect.engine.forward.gradients`, the one batched ``autograd.grad`` over (N, k) target scores;
- :mod:`introspect.engine.targets`: what a CAM explains (``ClassScore``, ``TrueLabel``, ``FinerContrast``,
  ``BoxScore``, ``PixelClass``) and the (N, k) scores of per-image target lists;
- :mod:`introspect.engine.cam`: the CAM method registry, the formulas, the one normaliser and ``cam_maps``;
- :mod:`introspect.engine.resize`: bilinear resizes as matrix products (the normaliser's resize, a segmenter's
  resized head);
- :mod:`introspect.engine.classes`, :mod:`introspect.engine.features`: a classifier's classes and feature maps.

The engine imports nothing from ``introspect.analyzers``, ``introspect.tasks`` or ``introspect.models``:
only ``introspect.hooks``, ``introspect.layers``, ``introspect.loaded``, ``introspect.errors`` and
``introspect.records``.
"""
