"""Rollout side of ringjax: generation engines (embedded JAX, SGLang), Ray workers and trajectory queues.

Built on `ringjax.model`'s KV-cache path; see the README's roadmap for what is in place.
"""
