"""descore_sdk.runtime"""
