"""ModelCache: a model's files downloaded once, onto a shared volume (storage pvc) or onto the
nodes that run the model (storage node).

  api.py       PURE: spec -> typed CacheSpec (mirrors crds/serving.kubemaas.io_modelcaches.yaml)
  render.py    PURE: the download pods, clean-up pods and the claim
  progress.py  PURE: the download pod's progress lines and final report
  status.py    PURE: observed pods -> the ModelCache's status; what to do next
  evict.py     PURE: which caches leave a node whose budget is exceeded (least recently used)
  mount.py     PURE: a ModelDeployment's pods mount a cache read-only
  reconcile.py observe -> decide -> apply (I/O only through k8s/)
  handlers.py  kopf indexes and event handlers (imported by the operator's handlers.py)

This package's __init__ imports nothing, so that the pure modules stay free of kopf.
"""
