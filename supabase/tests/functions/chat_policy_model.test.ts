/**
 * A tenant policy names the model and its fallbacks (ops.agent_policies
 * model, model_fallbacks, set with ops.policy_set): that tenant's turns call
 * them, each model at its configured upstream (else OPENAI_BASE_URL), while
 * other tenants keep AI_AGENT_MODEL and AI_AGENT_MODEL_FALLBACKS.
 */
import { assertEquals, assertMatch } from "./assert.ts";
import { attemptsOf, brief, withFallbacks } from "../support/fallbacks.ts";
import { testUrls } from "../support/function-harness.ts";
import { runOps } from "../../../scripts/ops.ts";

for (const store of ["supabase", "redis"] as const) {
  Deno.test(`policy model (${store}): the tenant's model and fallbacks, others unchanged`, () =>
    withFallbacks({ store }, async (h, backup) => {
      const tenant = await h.member();
      const other = await h.member();
      // As the runbook does it: npm run ops -- policy set … model=… model_fallbacks=…
      let errors = "";
      const code = await runOps(
        [
          ...["policy", "set", "--org", tenant.orgId, "model=tenant-model"],
          ...["model_fallbacks=backup-model", "--by", "test", "--db", testUrls().databaseUrl],
        ],
        () => {},
        (s) => (errors += s),
      );
      assertEquals(code, 0, errors);
      const ask = async (m: typeof tenant) => {
        const res = await h.call({ message: "which model?", org_id: m.orgId }, { token: m.token });
        const body = await res.json();
        assertEquals(res.status, 200, JSON.stringify(body));
        return { body, row: (await h.usageRows(body.request_id))[0]! };
      };
      const own = await ask(tenant);
      assertMatch(own.body.model, /^tenant-model/);
      assertEquals(h.openai.requests.at(-1)!.body.model, "tenant-model", "at OPENAI_BASE_URL");
      assertEquals(own.row.model, own.body.model);
      // Its fallback is the configured upstream of that model (the backup stand-in).
      h.openai.script({ kind: "error", status: 503 });
      const fell = await ask(tenant);
      assertMatch(fell.body.model, /^backup-model/);
      assertEquals(backup.requests.at(-1)!.authorization, "Bearer sk-backup");
      assertEquals(attemptsOf(fell.row).map(brief), [
        "tenant-model failed:503 none",
        "backup-model answered reported",
      ]);
      const theirs = await ask(other);
      assertMatch(theirs.body.model, /^primary-model/);
    }));
}
