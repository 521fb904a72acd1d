"""specdec.draft_service"""
