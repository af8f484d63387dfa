# One image for every inferbus process; compose.yaml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir .
ENV INFERBUS_DATA_DIR=/data
ENTRYPOINT ["inferbus"]
