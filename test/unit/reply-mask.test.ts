// The HTTP Date tolerance: exactly the bytes of a Date header's value may differ between the
// original's and a replica's reply; anything else is still a divergence.
import t from "tap";
import fc from "fast-check";
import { assertProperty } from "../property.js";
import { HTTP_DATE_CONTEXT, httpDateDifference } from "../../src/replica/reply-mask.js";

const b = (s: string) => Buffer.from(s, "latin1");
const c = (s: string) => s.charCodeAt(0);

t.test("a difference inside a Date value is tolerated", async (t) => {
  t.ok(httpDateDifference(b("OK\r\nDate: Thu, 03 Dec 2026 06:12:1"), c("6"), c("7")), "seconds");
  t.ok(httpDateDifference(b("\r\nDate: "), c("T"), c("F")), "weekday (midnight)");
  t.ok(
    httpDateDifference(b("\ndate: Thu, 03 Dec 2026 06:12:16 GM"), c("T"), c("X")),
    "case-insensitive name",
  );
  t.equal(HTTP_DATE_CONTEXT, 35);
});

t.test("anything else is not", async (t) => {
  t.notOk(httpDateDifference(b("Date: Thu, 03 Dec 2026 06:12:1"), c("6"), c("7")), "no line start in sight");
  t.notOk(
    httpDateDifference(b("\r\nDate: Thu, 03 Dec 2026 06:12:16 GMT"), c("\r"), c("x")),
    "past the value",
  );
  t.notOk(httpDateDifference(b("\r\nDate: Thu, 03 Dec 2026 06:12:1"), c("6"), c("\r")), "a line break");
  t.notOk(httpDateDifference(b("\r\nDate: Thu, 03 Dec 2026 06:12:1"), c("6"), 0), "a control byte");
  t.notOk(
    httpDateDifference(b("\r\nDate:Thu, 03 Dec 2026 06:12:1"), c("6"), c("7")),
    "not the header's form",
  );
  t.notOk(httpDateDifference(b("\r\nX-Date: Thu, 03 Dec 2026 06:1"), c("6"), c("7")), "another header");
  t.notOk(httpDateDifference(b("\r\nSet-Cookie: id=1234567"), c("8"), c("9")), "a session id");
  t.notOk(httpDateDifference(b("\r\nDate: Thu,\n03 Dec 2026 06:12:1"), c("6"), c("7")), "a later line");
  t.notOk(httpDateDifference(b("\r\nDate"), c(":"), c(";")), "inside the name");
});

t.test("property: no line beginning with Date: in the context, no tolerance", async (t) => {
  t.doesNotThrow(() =>
    assertProperty(
      "property: no line beginning with Date: in the context, no tolerance",
      fc.property(
        fc.uint8Array({ maxLength: HTTP_DATE_CONTEXT }),
        fc.integer({ min: 0, max: 255 }),
        fc.integer({ min: 0, max: 255 }),
        (before, theirs, mine) => {
          const buf = Buffer.from(before);
          const nl = buf.lastIndexOf(0x0a);
          const line =
            nl < 0
              ? undefined
              : buf
                  .subarray(nl + 1)
                  .toString("latin1")
                  .toLowerCase();
          if (httpDateDifference(buf, theirs, mine)) {
            return line !== undefined && line.startsWith("date: ") && line.length < HTTP_DATE_CONTEXT;
          }
          return true;
        },
      ),
    ),
  );
});
