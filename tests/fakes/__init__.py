"""Stand-ins for the services AgentPod talks to: a scripted OpenAI-compatible LLM (``fake_llm``) and a
real ``opencode serve`` process wired to it (``opencode_server``)."""
