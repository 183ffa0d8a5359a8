-- Each agent backs up into a repository of its own (a child of the job's repository, with its
-- own key) so that one compromised machine can neither read nor damage another's backups.
-- parent_id/agent_id name the repository and the agent a child belongs to.
ALTER TABLE repositories ADD COLUMN parent_id BIGINT REFERENCES repositories(id);
ALTER TABLE repositories ADD COLUMN agent_id BIGINT REFERENCES agents(id);
CREATE UNIQUE INDEX repositories_parent_agent ON repositories(parent_id, agent_id);
-- A pool whose machines trust each other may share one repository (and its key) across agents
-- for deduplication across machines; it has to say so.
ALTER TABLE pools ADD COLUMN shared_dedup BIGINT NOT NULL DEFAULT 0;
