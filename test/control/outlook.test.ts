// The switchover's prediction (promotionOutlook, the engine's splice rule seen from outside) must
// match what the engine's promote() then does, connection kind by connection kind.
import t from "tap";
import { carriable, promotionOutlook } from "../../src/control/data-plane.js";
import { ClientConnection, EngineDataPlane, R1, R2, R3, proxyConfig } from "./helpers.js";

t.test("promotionOutlook predicts promote() exactly", async (t) => {
  const dp = new EngineDataPlane(proxyConfig({ r1: R1, r2: R2 }));
  const healthy = new ClientConnection(dp).open({ r1: R1, r2: R2 });
  healthy.client("GET\r\n");
  healthy.original("abc");
  healthy.replica(R1, 0, "abc");
  const diverged = new ClientConnection(dp).open({ r1: R1, r2: R2 });
  diverged.client("GET\r\n");
  diverged.original("abc");
  diverged.replica(R1, 0, "abd");
  const shadowNotAnswered = new ClientConnection(dp).open({ r2: R2 }); // r1 never answered its SYN
  dp.addReplica("r3", R3);
  const beforeR3 = new ClientConnection(dp).open({ r1: R1, r2: R2, r3: R3 });
  void beforeR3;
  new ClientConnection(dp).syn(); // half-open

  const conns = () => [...dp.connections()];
  const find = (c: ClientConnection) => conns().find((x) => x.clientPort === c.port)!;
  t.ok(carriable(find(healthy), "r1"));
  t.notOk(carriable(find(diverged), "r1"), "a diverged shadow cannot continue");
  t.notOk(carriable(find(shadowNotAnswered), "r1"), "a shadow without its handshake cannot");
  t.notOk(carriable(find(healthy), "r3"), "a replica that joined later cannot");
  t.same(promotionOutlook(conns(), "r1"), { carriable: 2, blocking: 2, halfOpen: 1 });
  t.same(promotionOutlook(conns(), "r3"), { carriable: 1, blocking: 3, halfOpen: 1 });
  const predicted = promotionOutlook(conns(), "r1");
  const report = await dp.promote("r1");
  t.same(
    report,
    { spliced: predicted.carriable, reset: predicted.blocking, dropped: predicted.halfOpen },
    "spliced, reset and dropped as predicted",
  );
});
