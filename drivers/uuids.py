"""Every GATT UUID the project uses, named once (bumble's ``gatt.py`` style)."""

from __future__ import annotations

from typing import Final

# fmt: off
# Services
DEVICE_INFORMATION_SERVICE: Final = "180A"
BATTERY_SERVICE:            Final = "180F"
WEIGHT_SCALE_SERVICE:       Final = "181D"
BLOOD_PRESSURE_SERVICE:     Final = "1810"
HEALTH_THERMOMETER_SERVICE: Final = "1809"
GLUCOSE_SERVICE:            Final = "1808"
CURRENT_TIME_SERVICE:       Final = "1805"
BODY_COMPOSITION_SERVICE:   Final = "181B"
CGM_SERVICE:                Final = "181F"
PULSE_OXIMETER_SERVICE:     Final = "1822"
USER_DATA_SERVICE:          Final = "181C"

# Characteristics
SYSTEM_ID:                  Final = "2A23"
MODEL_NUMBER:               Final = "2A24"
SERIAL_NUMBER:              Final = "2A25"
FIRMWARE_REVISION:          Final = "2A26"
HARDWARE_REVISION:          Final = "2A27"
SOFTWARE_REVISION:          Final = "2A28"
MANUFACTURER_NAME:          Final = "2A29"
BATTERY_LEVEL:              Final = "2A19"
DATE_TIME:                  Final = "2A08"
WEIGHT_MEASUREMENT:         Final = "2A9D"
WEIGHT_SCALE_FEATURE:       Final = "2A9E"
BLOOD_PRESSURE_MEASUREMENT: Final = "2A35"
INTERMEDIATE_CUFF_PRESSURE: Final = "2A36"
BLOOD_PRESSURE_FEATURE:     Final = "2A49"
TEMPERATURE_MEASUREMENT:    Final = "2A1C"
TEMPERATURE_TYPE:           Final = "2A1D"
INTERMEDIATE_TEMPERATURE:   Final = "2A1E"
GLUCOSE_MEASUREMENT:        Final = "2A18"
GLUCOSE_MEASUREMENT_CONTEXT: Final = "2A34"
GLUCOSE_FEATURE:            Final = "2A51"
RECORD_ACCESS_CONTROL_POINT: Final = "2A52"
CURRENT_TIME:               Final = "2A2B"
LOCAL_TIME_INFORMATION:     Final = "2A0F"
BODY_COMPOSITION_MEASUREMENT: Final = "2A9C"
BODY_COMPOSITION_FEATURE:   Final = "2A9B"
CGM_MEASUREMENT:            Final = "2AA7"
CGM_FEATURE:                Final = "2AA8"
CGM_STATUS:                 Final = "2AA9"
CGM_SESSION_START_TIME:     Final = "2AAA"
CGM_SESSION_RUN_TIME:       Final = "2AAB"
CGM_SPECIFIC_OPS_CONTROL_POINT: Final = "2AAC"
PLX_SPOT_CHECK_MEASUREMENT: Final = "2A5E"
PLX_CONTINUOUS_MEASUREMENT: Final = "2A5F"
PLX_FEATURES:               Final = "2A60"
USER_INDEX:                 Final = "2A9A"
DATABASE_CHANGE_INCREMENT:  Final = "2A99"
USER_CONTROL_POINT:         Final = "2A9F"
# fmt: on

NAMES: Final[dict[str, str]] = {
    DEVICE_INFORMATION_SERVICE: "Device Information",
    BATTERY_SERVICE: "Battery",
    WEIGHT_SCALE_SERVICE: "Weight Scale",
    SYSTEM_ID: "System ID",
    MODEL_NUMBER: "Model Number String",
    SERIAL_NUMBER: "Serial Number String",
    FIRMWARE_REVISION: "Firmware Revision String",
    HARDWARE_REVISION: "Hardware Revision String",
    SOFTWARE_REVISION: "Software Revision String",
    MANUFACTURER_NAME: "Manufacturer Name String",
    BATTERY_LEVEL: "Battery Level",
    DATE_TIME: "Date Time",
    WEIGHT_MEASUREMENT: "Weight Measurement",
    WEIGHT_SCALE_FEATURE: "Weight Scale Feature",
    BLOOD_PRESSURE_SERVICE: "Blood Pressure",
    BLOOD_PRESSURE_MEASUREMENT: "Blood Pressure Measurement",
    INTERMEDIATE_CUFF_PRESSURE: "Intermediate Cuff Pressure",
    BLOOD_PRESSURE_FEATURE: "Blood Pressure Feature",
    HEALTH_THERMOMETER_SERVICE: "Health Thermometer",
    TEMPERATURE_MEASUREMENT: "Temperature Measurement",
    TEMPERATURE_TYPE: "Temperature Type",
    INTERMEDIATE_TEMPERATURE: "Intermediate Temperature",
    GLUCOSE_SERVICE: "Glucose",
    GLUCOSE_MEASUREMENT: "Glucose Measurement",
    GLUCOSE_MEASUREMENT_CONTEXT: "Glucose Measurement Context",
    GLUCOSE_FEATURE: "Glucose Feature",
    RECORD_ACCESS_CONTROL_POINT: "Record Access Control Point",
    CURRENT_TIME_SERVICE: "Current Time",
    CURRENT_TIME: "Current Time",
    LOCAL_TIME_INFORMATION: "Local Time Information",
    BODY_COMPOSITION_SERVICE: "Body Composition",
    BODY_COMPOSITION_MEASUREMENT: "Body Composition Measurement",
    BODY_COMPOSITION_FEATURE: "Body Composition Feature",
    CGM_SERVICE: "Continuous Glucose Monitoring",
    CGM_MEASUREMENT: "CGM Measurement",
    CGM_FEATURE: "CGM Feature",
    CGM_STATUS: "CGM Status",
    CGM_SESSION_START_TIME: "CGM Session Start Time",
    CGM_SESSION_RUN_TIME: "CGM Session Run Time",
    CGM_SPECIFIC_OPS_CONTROL_POINT: "CGM Specific Ops Control Point",
    PULSE_OXIMETER_SERVICE: "Pulse Oximeter",
    PLX_SPOT_CHECK_MEASUREMENT: "PLX Spot-check Measurement",
    PLX_CONTINUOUS_MEASUREMENT: "PLX Continuous Measurement",
    PLX_FEATURES: "PLX Features",
    USER_DATA_SERVICE: "User Data",
    USER_INDEX: "User Index",
    DATABASE_CHANGE_INCREMENT: "Database Change Increment",
    USER_CONTROL_POINT: "User Control Point",
}
