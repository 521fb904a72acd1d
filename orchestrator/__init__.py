"""specdec.orchestrator"""
