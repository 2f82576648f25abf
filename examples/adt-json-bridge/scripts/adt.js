// adt-to-api source transform: the two things the declarative steps cannot do.
// Helpers (toE164, ageInYears, ageGroup) come from scripts/lib/patient.js; the thresholds and
// the default country from [channel.scripts] config (configMap).

// 1. Phone numbers in E.164, in every repetition of PID-13. The HIS lets registration clerks
//    type numbers freely ("(217) 555-0143", "217.555.0188"); the API wants "+12175550143".
//    A number we cannot normalise safely is sent as typed (and the API flags it).
const country = configMap.get("default_country_code");
for (let i = 1; msg.exists(`PID-13(${i})`); i++) {
  const number = `PID-13(${i}).1`;
  // XTN-1 is the number as text; some systems leave it empty and fill XTN-5/6/7 instead.
  const written =
    msg.get(number) ||
    [msg.get(`PID-13(${i}).5`), msg.get(`PID-13(${i}).6`), msg.get(`PID-13(${i}).7`)].join("");
  const e164 = toE164(written, country);
  if (e164 !== null) {
    msg.set(number, e164);
  } else if (written !== "") {
    // No number in the log: it is patient data.
    logger.warn(`PID-13 repetition ${i} is not a phone number that can be normalised; sent as is`);
  }
}

// 2. The patient's age group at the time of the event, for the API's triage views. HL7 has
//    no field for it, so it travels in this interface's own Z segment, ZPX-1 (the JSON
//    template reads it from there). The archive keeps it too, as a record of what was sent.
const age = ageInYears(msg.get("PID-7"), msg.get("EVN-2") || msg.get("MSH-7"));
if (age !== null) {
  const pediatricUnder = Number(configMap.get("pediatric_under_years"));
  const seniorFrom = Number(configMap.get("senior_from_years"));
  msg.set("ZPX-1", ageGroup(age, pediatricUnder, seniorFrom));
}
