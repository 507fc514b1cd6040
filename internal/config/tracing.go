package config

// Tracing lists the OpenTelemetry variables refresher honours (internal/tracing reads
// them through the OpenTelemetry SDK; this struct only documents them in `config`).
type Tracing struct {
	Endpoint       string `envconfig:"OTEL_EXPORTER_OTLP_ENDPOINT" secret:"url" desc:"OTLP/HTTP collector (e.g. http://127.0.0.1:4318); traces are off while neither endpoint is set"`
	TracesEndpoint string `envconfig:"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" secret:"url" desc:"OTLP/HTTP endpoint for traces only (overrides the one above)"`
	Headers        string `envconfig:"OTEL_EXPORTER_OTLP_HEADERS" secret:"true" desc:"headers for the collector (key=value,...), e.g. its authentication"`
	ServiceName    string `envconfig:"OTEL_SERVICE_NAME" desc:"service.name of the spans (default refresher)"`
	Exporter       string `envconfig:"OTEL_TRACES_EXPORTER" desc:"none turns tracing off; otlp turns it on"`
	Disabled       string `envconfig:"OTEL_SDK_DISABLED" desc:"true turns tracing off"`
}
