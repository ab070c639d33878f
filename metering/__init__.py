"""Meters: one per home, each with its own key, posting what the home drew to the Billing
contract (aggregator_contract/Billing.vy, docs/billing.md).

    metering.emulated   EmulatedMeter: the lab's emulated homes. Switched loads with an
                        emulated actuator are measured from their relay state as the devices
                        report it on MQTT (RelayRecorder; rated kW while on); every other
                        component has no device to measure, so it reads its scheduled power
                        with the scenario's deviations applied (billing.deviations).
    metering.tasmota    TasmotaSensorMeter: a real meter's `tele/<topic>/SENSOR` ENERGY
                        telemetry (Total, ExportActive) turned into the same slot readings.
    metering.run        the meters of a run (`python -m metering`, started by `lab run`):
                        record the day, then deposit, post and settle each home.
    metering.post       the readings to the chain: per slot, or hourly totals each with a
                        hash commitment of its slot readings.
"""
