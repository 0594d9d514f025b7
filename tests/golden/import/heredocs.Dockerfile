FROM scratch
ARG WHO=world
ENV GREETING=hello
COPY <<EOF /etc/greeting
$GREETING, ${WHO}!
  "quotes" stay, \$ENV stays literal
EOF
COPY <<'RAW' <<-TABS /etc/
no $EXPANSION here
RAW
	tabs are stripped
	from $WHO
	TABS
RUN <<SCRIPT
set -eu
echo "$GREETING"
SCRIPT
RUN cat <<A > /a && cat <<B > /b
first
A
second
B
