"""Emulated BLE health devices (bumble GATT servers) built from firmware profiles."""

from gateway.emulator.device import EmulatedDevice, encode_reading
from gateway.emulator.radio import VirtualRadio

__all__ = ["EmulatedDevice", "VirtualRadio", "encode_reading"]
