// Helpers shared by the adt-to-api channel's scripts ([channel.scripts] libraries).
//
// Evaluated once per script runtime, before any script, as global code: the functions below
// are visible to every script of the channel. Keep no per-message state here (each thread
// has its own copy, and a runtime can be replaced at any time).

/**
 * A phone number as E.164 ("+12175550143"), or null when it cannot be normalised safely.
 *
 * `defaultCountry` is the country calling code of numbers written nationally ("1" for the
 * North American Numbering Plan, "44" for the UK). Numbers written internationally
 * ("+44 20 7946 0321", "0044 …") keep their own country code.
 */
function toE164(text, defaultCountry) {
  const written = String(text || "").trim();
  if (written === "") return null;
  let digits = written.replace(/\D/g, "");
  let international = written.startsWith("+");
  if (!international && digits.startsWith("00")) {
    digits = digits.slice(2);
    international = true;
  }
  if (!international) {
    if (defaultCountry === "1") {
      // NANP: ten digits, or eleven with the leading 1.
      if (digits.length === 11 && digits.startsWith("1")) digits = digits.slice(1);
      if (digits.length !== 10) return null;
    } else if (digits.startsWith("0")) {
      digits = digits.slice(1); // the national trunk prefix
    }
    digits = defaultCountry + digits;
  }
  // E.164: at most 15 digits; anything much shorter is an extension or a typo.
  return digits.length >= 8 && digits.length <= 15 ? "+" + digits : null;
}

/**
 * Whole years between two HL7 dates (DT/DTM, only YYYYMMDD is read), or null when either is
 * missing or not a date. The age is taken at the event, not "now", so a message replayed
 * next year gives the same answer.
 */
function ageInYears(birth, at) {
  const parse = (dtm) => {
    const m = /^(\d{4})(\d{2})(\d{2})/.exec(String(dtm || ""));
    return m ? { y: Number(m[1]), m: Number(m[2]), d: Number(m[3]) } : null;
  };
  const b = parse(birth);
  const a = parse(at);
  if (!b || !a) return null;
  let years = a.y - b.y;
  if (a.m < b.m || (a.m === b.m && a.d < b.d)) years -= 1;
  return years >= 0 ? years : null;
}

/** "pediatric" below `pediatricUnder`, "senior" from `seniorFrom`, else "adult". */
function ageGroup(age, pediatricUnder, seniorFrom) {
  if (age < pediatricUnder) return "pediatric";
  if (age >= seniorFrom) return "senior";
  return "adult";
}
