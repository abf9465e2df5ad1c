"""kubemaas operator: serves ModelDeployments (serving.kubemaas.io/v1alpha1) on Kubernetes."""

__version__ = "0.1.0"
