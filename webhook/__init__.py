"""Kubernetes mutating admission webhook that injects the model fetcher into pods."""
