"""atlas.cli"""
