"""What only the tests and benchmarks need: accounts, an OTLP receiver, Prometheus and PromQL
checks, a `vllm serve` to compare with, migration checks. The launcher they start the platform
with is `llmchat_common.launch`.
"""
