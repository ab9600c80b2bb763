"""atlas.config"""
