"""specdec.verifier_service"""
