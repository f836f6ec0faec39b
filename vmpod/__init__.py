"""vmpod: run virtual machines as Kubernetes pods."""
