"""`lucent endpoint`: a self-hosted SageMaker endpoint (runtime API, data capture, online explanations)."""
