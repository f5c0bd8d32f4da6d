"""descore_sdk.export"""
