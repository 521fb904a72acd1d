"""specdec.bench"""
