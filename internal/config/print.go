package config

import (
	"maps"

	"go.yaml.in/yaml/v3"
)

// Masked is printed in place of every secret value.
const Masked = "*****"

// Masked returns a copy of c whose secret option values are replaced by
// Masked, safe to print or log.
func (c *Config) Masked() *Config {
	out := *c
	out.Datasets = make([]Dataset, len(c.Datasets))
	for i, ds := range c.Datasets {
		ds.Options = maps.Clone(ds.Options)
		for k := range ds.Options {
			if ds.Secret(k) {
				ds.Options[k] = Masked
			}
		}
		out.Datasets[i] = ds
	}
	return &out
}

// YAML renders the configuration with its secrets masked and every default
// spelled out.
func (c *Config) YAML() ([]byte, error) {
	return yaml.Marshal(c.Masked())
}
